"""The `ExternalService` resource: a system outside the mesh that workloads may call (egress).

    metadata.name          the host apps call: `http://fec-api/...` goes to this service
    spec.address           where it really is (a host name or an IP address)
    spec.port              its port
    spec.tls               originate TLS to it (the app still speaks plain HTTP to its side-car)
    spec.allowLoopback     it is on this host (127.0.0.1, localhost, ...): without it such an
                           address is refused, and side-cars never forward to the host's own
                           addresses (`compile.egress`)
    spec.outlierDetection, connectionPool, retries, timeout   as in a TrafficPolicy

A workload lists it in `spec.calls` like any service, and its calls get the mesh's retries with
back-off, timeouts and circuit breaking ("sync adapters inherit retries & back-off"). A host no
workload declared is refused by the side-car (404, with the allowed list).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import ClassVar

from pydantic import Field, model_validator

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
    allow_loopback: bool = False
    outlier_detection: OutlierDetection | None = None
    connection_pool: ConnectionPool | None = None
    retries: Retries | None = None
    timeout: PositiveDuration | None = None

    @model_validator(mode="after")
    def _not_this_host(self) -> ExternalServiceSpec:
        if not self.allow_loopback and host_own_address(self.address):
            raise ValueError(
                f"address: {self.address!r} is this host's own address; side-cars do not forward there "
                "(other apps' ports, the admin API). Say allowLoopback: true if a system outside the mesh "
                "really listens there"
            )
        return self


def host_own_address(address: str) -> bool:
    """Loopback, unspecified or link-local, however it is spelled (`localhost`, `127.1`,
    `0x7f000001`, `2130706433`, `::1`, `::ffff:127.0.0.1`). Names other than localhost are not
    resolved here: the side-car checks the address it connects to (`compile.egress`)."""
    name = address.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.inet_aton(name))  # the spellings inet_aton accepts
        except OSError:
            return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip in ipaddress.ip_network("0.0.0.0/8")


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
