"""Who a proxy is: the identity and local ports the compiler needs to build its config.

The supervisor (standalone) or the injector (Kubernetes) creates a `Proxy` per Envoy; the xDS
node ID Envoy presents maps to exactly one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Credentials:
    """What a proxy proves itself with and trusts: its X.509-SVID, key and the trust bundle."""

    spiffe_id: str
    chain_pem: str
    key_pem: str
    bundle_pem: str


class Role(StrEnum):
    SIDECAR = "sidecar"
    INGRESS = "ingress"


@dataclass(frozen=True)
class Proxy:
    node_id: str
    role: Role
    service: str = ""  # the workload a side-car serves; "" for the ingress
    replica: int = 0
    address: str = "127.0.0.1"
    inbound_port: int = 0  # side-car: where other side-cars reach this replica
    outbound_port: int = 0  # side-car: the app's HTTP proxy for calls into the mesh
    app_port: int = 0  # side-car: where the app itself listens (127.0.0.1 only)
    ingress_port: int = 0  # ingress: where clients of the mesh connect
    access_log: str = ""  # a file for the access log (Envoy reopens it on /reopen_logs); "" = stdout
    # This host's addresses besides loopback (standalone: its interfaces; a pod: its IP and its
    # node's): no call leaves through `passthrough` or an ExternalService to them (`egress`).
    host_addresses: tuple[str, ...] = ()

    @property
    def caller(self) -> str | None:
        """The proxy as `MeshIndex.called/callees` name callers: its workload, None for the ingress."""
        return None if self.role is Role.INGRESS else self.service

    @classmethod
    def sidecar(cls, service: str, replica: int, **ports: int) -> Proxy:
        return cls(node_id=f"sidecar~{service}-{replica}", role=Role.SIDECAR, service=service, replica=replica, **ports)  # type: ignore[arg-type]

    @classmethod
    def ingress(cls, port: int, name: str = "ingress") -> Proxy:
        return cls(node_id=f"ingress~{name}", role=Role.INGRESS, ingress_port=port)
