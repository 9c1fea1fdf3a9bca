"""The `AccessPolicy` resource: which services may call a service, with which methods and paths.

    spec.destination.service          the service being protected
    spec.allow[].from                 caller services (workload names; `ingress` = the gateway)
    spec.allow[].methods              optional; any method when absent
    spec.allow[].pathPrefixes         optional; any path when absent

Once a service has any AccessPolicy, its side-cars deny every request that no rule allows
(403, counted). Callers are known by the SPIFFE ID of their mutual-TLS certificate, never by a
header. Paths are matched after normalization (`//x`, `/a/../x`, `%2F`, `%2e%2e` all become
their plain form); a prefix `/stats` matches `/stats`, `/stats/...` and `/stats;params`, not
`/statsx`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from pydantic import Field, field_validator

from interstate.model.base import Name, PathPrefix, Reference, Resource, Strict
from interstate.model.traffic_policy import Destination

INGRESS_CALLER = "ingress"  # the mesh's ingress gateway as a caller
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class AllowRule(Strict):
    from_: list[Name] = Field(alias="from", min_length=1)
    methods: list[str] = Field(default_factory=list)
    path_prefixes: list[PathPrefix] = Field(default_factory=list)

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"{method!r} is not a method; use one of {', '.join(METHODS)}")
        return methods

    @field_validator("path_prefixes")
    @classmethod
    def _prefixes(cls, prefixes: list[str]) -> list[str]:
        for prefix in prefixes:
            if (
                not prefix.startswith("/")
                or any(c in prefix for c in "?#%;\\ ")
                or "//" in prefix
                or "/../" in (prefix + "/")
                or "/./" in (prefix + "/")
            ):
                raise ValueError(
                    f"{prefix!r} is not a plain path prefix; write it normalized, starting with '/', "
                    "without '?', '#', '%', ';', '//', '.' or '..' segments (e.g. '/stats')"
                )
        return prefixes


class AccessPolicySpec(Strict):
    destination: Destination
    allow: list[AllowRule] = Field(min_length=1)


class AccessPolicy(Resource):
    KIND: ClassVar[str] = "AccessPolicy"

    spec: AccessPolicySpec

    def references(self) -> Iterable[Reference]:
        yield Reference("spec.destination.service", "Workload", self.spec.destination.service)
        for i, rule in enumerate(self.spec.allow):
            for j, caller in enumerate(rule.from_):
                if caller != INGRESS_CALLER:
                    yield Reference(f"spec.allow[{i}].from[{j}]", "Workload", caller)
