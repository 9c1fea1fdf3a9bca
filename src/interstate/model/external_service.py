"""The `ExternalService` resource: a system outside the mesh that workloads may call (egress).

    metadata.name          the host apps call: `http://fec-api/...` goes to this service
    spec.address           where it really is (a host name or an IP address)
    spec.port              its port
    spec.tls               originate TLS to it (the app still speaks plain HTTP to its side-car)
    spec.outlierDetection, connectionPool, retries, timeout   as in a TrafficPolicy

A workload lists it in `spec.calls` like any service, and its calls get the mesh's retries with
back-off, timeouts and circuit breaking ("sync adapters inherit retries & back-off"). A host no
workload declared is refused by the side-car (404, with the allowed list).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from interstate.model.base import Port, Resource, Strict
from interstate.model.traffic_policy import (
    ConnectionPool,
    Destination,
    OutlierDetection,
    PositiveDuration,
    Retries,
    TrafficPolicySpec,
)


class ExternalServiceSpec(Strict):
    address: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^[0-9a-fA-F:]+$", max_length=253)
    port: Port
    tls: bool = False
    outlier_detection: OutlierDetection | None = None
    connection_pool: ConnectionPool | None = None
    retries: Retries | None = None
    timeout: PositiveDuration | None = None


class ExternalService(Resource):
    KIND: ClassVar[str] = "ExternalService"

    spec: ExternalServiceSpec

    def policy(self) -> TrafficPolicySpec:
        """Its resilience settings in the shape callers' routes and clusters use."""
        spec = self.spec
        return TrafficPolicySpec(
            destination=Destination(service=self.name),
            outlier_detection=spec.outlier_detection,
            connection_pool=spec.connection_pool,
            retries=spec.retries,
            timeout=spec.timeout,
        )
