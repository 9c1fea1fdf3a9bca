"""The `TrafficSplit` resource: calls to one service shared among backends by weight (canary).

    spec.service                  the service callers address (`http://results:8080`, a Gateway route)
    spec.backends[].service       a workload that serves it (e.g. results at v1, results-v2)
    spec.backends[].weight        integer percent; the weights sum to 100
    spec.pin.header{name,value}   optional: requests with this header always go to `pin.backend`
    spec.pin.backend              (a sticky canary: `x-canary: true` always reaches v2)
    spec.stickyBy{header | cookie{name, ttl}}
                                  optional: the backend is chosen by a hash of this header or
                                  cookie instead of at random, so one session keeps its version
                                  while the weights stay (consistent hashing across proxies)

Weights change live (`interstate split results results=50 results-v2=50`): only routes change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from pydantic import Field, model_validator

from interstate.model.base import Claim, Name, Reference, Resource, Strict
from interstate.model.traffic_policy import HashOn


class Backend(Strict):
    service: Name
    weight: int = Field(ge=0, le=100, strict=True)


class PinHeader(Strict):
    name: str = Field(pattern=r"^[a-z0-9-]+$")
    value: str = Field(min_length=1, max_length=256)


class Pin(Strict):
    header: PinHeader
    backend: Name


class TrafficSplitSpec(Strict):
    service: Name
    backends: list[Backend] = Field(min_length=1)
    pin: Pin | None = None
    sticky_by: HashOn | None = None

    @model_validator(mode="after")
    def _weights(self) -> TrafficSplitSpec:
        names = [b.service for b in self.backends]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"backends[{i}].service: {name!r} is listed twice")
        total = sum(b.weight for b in self.backends)
        if total != 100:
            weights = " + ".join(str(b.weight) for b in self.backends)
            raise ValueError(f"backends: weights must sum to 100, these sum to {total} ({weights})")
        if self.pin is not None and self.pin.backend not in names:
            raise ValueError(f"pin.backend: {self.pin.backend!r} is not one of the backends ({', '.join(names)})")
        return self


class TrafficSplit(Resource):
    KIND: ClassVar[str] = "TrafficSplit"

    spec: TrafficSplitSpec

    def references(self) -> Iterable[Reference]:
        yield Reference("spec.service", "Workload", self.spec.service)
        for i, backend in enumerate(self.spec.backends):
            yield Reference(f"spec.backends[{i}].service", "Workload", backend.service)

    def claims(self) -> Iterable[Claim]:
        yield Claim("spec.service", f"TrafficSplit/{self.spec.service}", f"the split of service {self.spec.service!r}")
