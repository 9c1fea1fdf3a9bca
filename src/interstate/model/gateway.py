"""The `Gateway` resource: the ingress route table (path prefix -> service) of the mesh."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from pydantic import Field, field_validator

from interstate.model.base import Name, PathPrefix, Reference, Resource, Strict


class GatewayRoute(Strict):
    path_prefix: PathPrefix
    service: Name


class GatewaySpec(Strict):
    routes: list[GatewayRoute] = Field(min_length=1)

    @field_validator("routes")
    @classmethod
    def _unique_prefixes(cls, routes: list[GatewayRoute]) -> list[GatewayRoute]:
        seen: set[str] = set()
        for route in routes:
            if route.path_prefix in seen:
                raise ValueError(f"path prefix {route.path_prefix!r} is listed twice")
            seen.add(route.path_prefix)
        return routes


class Gateway(Resource):
    """The ingress Envoy's routes; longer prefixes win over shorter ones."""

    KIND: ClassVar[str] = "Gateway"
    SINGLETON: ClassVar[bool] = True

    spec: GatewaySpec

    def references(self) -> Iterable[Reference]:
        for i, route in enumerate(self.spec.routes):
            yield Reference(f"spec.routes[{i}].service", "Workload", route.service)
