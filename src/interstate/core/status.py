"""The typed status model: what the core and the modes report, and the admin API, dashboard and
CLI show.

`MeshStatus` is one answer of `MeshControl.status()`: per service its replicas (processes,
xDS sync) and, once `resilience()` added it, what callers' side-cars saw; the ingress; the
control plane and supervisor; the boundary ledger; the autoscalers. `IdentityStatus` is the CA and
the certificates in force. `to_json` turns any of them into the JSON the API serves (a field's
`json` metadata renames it, e.g. `from_` -> "from"). Pure data; no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from interstate.telemetry.boundary import BoundarySummary
from interstate.telemetry.envoys import Ejection, FailureGroup
from interstate.xds.sync import NodeSync


class ReplicaState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    UNRESPONSIVE = "unresponsive"  # running, but its liveness check went unanswered (hung, stopped)
    DRAINING = "draining"
    STOPPED = "stopped"


def to_json(value: Any) -> Any:
    """Dataclasses (recursively, in lists and dicts too) as JSON-ready dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.metadata.get("json", f.name): to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


# ---- processes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlPlaneInfo:
    """The control-plane process now serving: its pid, how often it was restarted (by the
    supervisor, after it died), since when this one serves, and how the previous one ended."""

    pid: int
    restarts: int = 0
    since: str = ""  # ISO 8601, UTC
    last_exit: str | None = None  # e.g. "killed by SIGKILL", None before the first restart

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ControlPlaneInfo:
        return cls(int(data["pid"]), int(data.get("restarts", 0)), str(data.get("since", "")), data.get("last_exit"))


@dataclass(frozen=True)
class SupervisorInfo:
    """The process supervisor (standalone `interstate up`): its pid, and the running units it
    adopted from a predecessor that was killed (none when it started them all)."""

    pid: int
    adopted: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SupervisorInfo:
        return cls(int(data["pid"]), [str(a) for a in data.get("adopted", [])])


@dataclass(frozen=True)
class AppProcess:
    pid: int | None
    port: int
    restarts: int
    log: str


@dataclass(frozen=True)
class SidecarProcess:
    pid: int | None
    node: str
    inbound: int
    outbound: int
    admin: str  # its admin socket (`telemetry.envoy_admin`)
    log: str
    restarts: int


@dataclass(frozen=True)
class ReplicaStatus:
    name: str
    state: ReplicaState
    version: str
    app: AppProcess | None = None
    sidecar: SidecarProcess | None = None
    xds: NodeSync | None = None  # None while its side-car has no stream open


# ---- what callers saw ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Resilience:
    """Calls to one service as its callers' Envoys saw them: counters summed over `callers`
    (`telemetry.envoys.COUNTERS`), who is ejected now, recent failures in words, the fault
    rehearsed (None when none)."""

    callers: list[str]
    counters: dict[str, int]
    ejected: list[Ejection]
    recent_failures: list[FailureGroup]
    fault: str | None = None


@dataclass(frozen=True)
class ServiceStatus:
    desired: int
    ready: int
    injected: bool
    policy: str | None
    mtls: str
    replicas: list[ReplicaStatus]
    resilience: Resilience | None = None  # filled by `MeshControl.resilience()` where it is asked


@dataclass(frozen=True)
class IngressStatus:
    url: str
    admin: str  # its admin socket
    pid: int | None
    xds: NodeSync | None


@dataclass(frozen=True)
class XdsSummary:
    port: int
    nodes: int


# ---- autoscaling ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricReading:
    """One metric of a decision: its measured value (None when unmeasured), target, and the
    replica count it alone would ask for (None when it could not say)."""

    name: str
    current: float | None
    target: float
    proposal: int | None


@dataclass(frozen=True)
class ScaleDecision:
    at: str  # ISO 8601, UTC
    from_: int = field(metadata={"json": "from"})
    to: int
    reason: str
    metrics: list[MetricReading]


@dataclass(frozen=True)
class AutoscalerStatus:
    last: ScaleDecision | None
    changes: list[ScaleDecision]  # the recent decisions that changed the count, oldest first
    scaling: bool  # a change is being carried out now


@dataclass(frozen=True)
class AutoscalingStatus:
    period_s: float
    autoscalers: dict[str, AutoscalerStatus] = field(default_factory=dict)


# ---- logs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogUse:
    """The run folder's logs: bytes on disk, files, the most they may take (files written to x
    (1 + kept) x the per-file limit), and how many rotations so far."""

    bytes: int
    files: int
    limit_bytes: int
    rotations: int = 0


# ---- the whole ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaBudget:
    """How many replicas the machine runs at most (standalone), how many the mesh runs, and what
    one uses now (resident MB of its app and Envoy; None before any runs) against the planned size."""

    max_replicas: int
    replicas: int
    measured_mb: float | None
    planned_mb: int


@dataclass(frozen=True)
class MeshStatus:
    services: dict[str, ServiceStatus]
    xds: XdsSummary
    control_plane: ControlPlaneInfo
    supervisor: SupervisorInfo | None = None
    ingress: IngressStatus | None = None
    boundary: BoundarySummary = field(default_factory=BoundarySummary)
    autoscaling: AutoscalingStatus | None = None
    logs: LogUse | None = None
    budget: ReplicaBudget | None = None

    def with_resilience(self, seen: dict[str, Resilience]) -> MeshStatus:
        services = {
            name: dataclasses.replace(svc, resilience=seen.get(name, svc.resilience))
            for name, svc in self.services.items()
        }
        return dataclasses.replace(self, services=services)


# ---- identity -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaStatus:
    fingerprint: str
    not_after: str
    trust_domain: str
    issued: int  # certificates issued by this control plane so far


@dataclass(frozen=True)
class CertStatus:
    node: str
    spiffe_id: str
    serial: str  # hex
    not_after: str
    rotates_in_s: float


@dataclass(frozen=True)
class IdentityStatus:
    ca: CaStatus
    certs: list[CertStatus]
