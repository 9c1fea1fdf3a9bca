"""The `TrafficPolicy` resource, in the chapter's shape: policies for calls to one destination.

    spec.destination.service             the service the policy applies to
    spec.outlierDetection.consecutiveErrors   eject a replica after this many 5xx in a row
    spec.outlierDetection.baseEjectionTime    for this long (times the number of ejections)
    spec.outlierDetection.interval            how often ejection is evaluated (default 1s)
    spec.outlierDetection.maxEjectionPercent  how many replicas may be ejected (default 100)

With the defaults, once every replica is ejected callers get an immediate 503 (circuit open)
instead of a request to a failing replica: Envoy's panic threshold is set to 0 for the service.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import ClassVar

from pydantic import Field, field_validator

from interstate.model.base import Claim, Duration, Name, Percent, Reference, Resource, Strict


class Destination(Strict):
    service: Name


class OutlierDetection(Strict):
    consecutive_errors: int = Field(default=5, ge=1, le=1000, strict=True)
    base_ejection_time: Duration = timedelta(seconds=30)
    interval: Duration = timedelta(seconds=1)
    max_ejection_percent: Percent = 100

    @field_validator("base_ejection_time", "interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        # Envoy NACKs a zero interval or ejection time; say so here, naming the field.
        if value <= timedelta(0):
            raise ValueError("must be more than 0s, e.g. 30s")
        return value


class TrafficPolicySpec(Strict):
    destination: Destination
    outlier_detection: OutlierDetection | None = None


class TrafficPolicy(Resource):
    KIND: ClassVar[str] = "TrafficPolicy"

    spec: TrafficPolicySpec

    def references(self) -> Iterable[Reference]:
        yield Reference("spec.destination.service", "Workload", self.spec.destination.service)

    def claims(self) -> Iterable[Claim]:
        service = self.spec.destination.service
        yield Claim(
            "spec.destination.service",
            f"TrafficPolicy/{service}",
            f"the traffic policy of service {service!r}",
        )
