"""The narrow interface the edges (admin API, dashboard) use to see and change a running mesh.

A mode implements `MeshControl` (standalone: `standalone.mesh.StandaloneMesh`); the edges import
only this module and `core.status`, never a mode. Errors come from `interstate.errors`
(`UnknownService`, `Rejected`, `ConfigError`, ...), turned into HTTP statuses by the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from interstate.audit import AuditLog
    from interstate.core.status import IdentityStatus, MeshStatus, Resilience
    from interstate.model.index import MeshConfig
    from interstate.model.traffic_policy import Fault

INGRESS_SERIES = "(ingress)"  # the ingress's series in `EnvoyAdmin` (no workload can be named so)


@dataclass(frozen=True)
class EnvoyAdmin:
    """Where to read one running Envoy's stats: its series (the workload, or `INGRESS_SERIES`),
    its replica name, node ID and admin socket (`telemetry.envoy_admin`)."""

    series: str
    name: str
    node_id: str
    socket: str


class MeshControl(Protocol):
    @property
    def mesh_dir(self) -> Path: ...  # relative paths in applied files resolve against it

    @property
    def config(self) -> MeshConfig: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    def certificates(self) -> IdentityStatus | None: ...  # None while the core is starting

    def status(self) -> MeshStatus: ...

    async def resilience(self) -> dict[str, Resilience]: ...  # per service, what its callers saw

    def envoy_admins(self) -> list[EnvoyAdmin]: ...

    def refresh_metrics(self) -> None: ...

    async def apply(self, config: MeshConfig, actor: str = ...) -> dict[str, Any]: ...

    async def scale(self, service: str, replicas: int, autoscaler: bool = ..., actor: str = ...) -> dict[str, Any]: ...

    async def set_fault(self, service: str, fault: Fault | None, actor: str = ...) -> dict[str, Any]: ...

    async def set_split(self, service: str, weights: dict[str, int], actor: str = ...) -> dict[str, Any]: ...
