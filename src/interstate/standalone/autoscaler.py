"""The standalone autoscaler: the Kubernetes HPA loop, run by interstate itself.

Every sync period (Settings.autoscale_period_s, 15 s like Kubernetes, down to 1 s) and for each
`HorizontalPodAutoscaler` of the running mesh it
1. measures each replica of the target workload since the previous sync: requests per second from
   its side-car's inbound counter (`http.inbound*.downstream_rq_total`), and the app process's CPU
   (psutil) as a percentage of the workload's `resources.requests.cpu`; a replica seen for the
   first time (or whose counter went back: a restart) has no value yet, as a new pod has no
   metrics in Kubernetes;
2. decides with `autoscale.algorithm.decide` (pure; ready replicas are READY ones, starting or
   restarting ones are unready), keeping the algorithm's state between syncs;
3. scales through the supervisor when the decision differs: new replicas start with their
   side-car and certificate and join over EDS once ready; removed ones leave EDS first, drain,
   then stop (`Supervisor.scale`). A scale runs in the background; that autoscaler skips its
   syncs until it is done.
Every decision that changes something is logged with its inputs (the algorithm's `reason`) and
recorded in the audit trail (`autoscaler.scale`, with whether the scale took effect);
`status()` keeps the recent ones for `interstate status`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import psutil

from interstate import audit
from interstate.autoscale import algorithm
from interstate.core.status import AutoscalerStatus, AutoscalingStatus, MetricReading, ScaleDecision, to_json
from interstate.core.status import ReplicaState as State
from interstate.model.autoscaler import CpuUtilization, HorizontalPodAutoscaler, RequestRate, Scaling
from interstate.model.index import MeshConfig, MeshIndex
from interstate.model.workload import cpu_millicores
from interstate.standalone.protocol import UnitStatus as Replica
from interstate.telemetry import rates
from interstate.telemetry.envoys import read_stats

log = logging.getLogger(__name__)

MIN_PERIOD_S = 1.0
KEEP_DECISIONS = 20


class Scaler(Protocol):
    """What the autoscaler needs of the supervisor."""

    @property
    def index(self) -> MeshIndex: ...

    @property
    def replicas(self) -> dict[str, list[Replica]]: ...

    async def scale(self, service: str, replicas: int, autoscaler: bool = False) -> dict[str, Any]: ...


@dataclass
class _Seen:
    at: float
    pid: int | None
    requests: int | None
    cpu_s: float | None


class Sampler:
    """Per-replica rates between two reads (requests/s, CPU % of the request)."""

    def __init__(self, http: httpx.AsyncClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    async def sample(
        self, replicas: Iterable[Replica], cpu_request_m: int | None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """({replica: requests/s}, {replica: cpu %}); replicas without a previous read are absent."""
        rps: dict[str, float] = {}
        cpu: dict[str, float] = {}
        replicas = list(replicas)
        counts = await asyncio.gather(*(self._requests(r) for r in replicas))
        now = self.clock()
        for replica, requests in zip(replicas, counts, strict=True):
            pid = replica.app_pid
            cpu_s = _cpu_seconds(pid)
            last = self._seen.get(replica.name)
            self._seen[replica.name] = _Seen(now, pid, requests, cpu_s)
            if last is None or now <= last.at:
                continue
            elapsed = now - last.at
            if requests is not None and last.requests is not None:
                rps[replica.name] = rates.per_second(last.requests, requests, elapsed)  # an Envoy restart too
            if cpu_request_m and cpu_s is not None and last.cpu_s is not None and pid == last.pid:
                used = max(0.0, cpu_s - last.cpu_s) / elapsed  # cores
                cpu[replica.name] = 100.0 * used * 1000 / cpu_request_m
        return rps, cpu

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget replicas that are gone."""
        live = set(names)
        self._seen = {name: seen for name, seen in self._seen.items() if name in live}

    async def _requests(self, replica: Replica) -> int | None:
        if replica.admin is None:
            return None
        try:
            stats = await read_stats(self.http, replica.admin, rates.INBOUND_REQUESTS)
        except (httpx.HTTPError, ValueError):
            return None
        return sum(stats.values()) if stats else None


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


def samples(scaling: Scaling, rps: Mapping[str, float], cpu: Mapping[str, float]) -> list[algorithm.MetricSample]:
    """The algorithm's inputs for one autoscaler, from measured per-replica values."""
    out = []
    for goal in scaling.metrics:
        if isinstance(goal, RequestRate):
            out.append(algorithm.MetricSample(goal.metric, "AverageValue", goal.per_replica, dict(rps)))
        elif isinstance(goal, CpuUtilization):
            out.append(algorithm.MetricSample("cpu", "Utilization", float(goal.percent), dict(cpu)))
    return out


def keep_autoscaled(running: MeshConfig, new: MeshConfig) -> MeshConfig:
    """`new` with the replica counts of autoscaled workloads kept from `running` (within the
    autoscaler's bounds): applying a file must not undo what the autoscaler decided, as on
    Kubernetes an HPA owns its target's replicas."""
    before = MeshIndex(running).workloads
    index = MeshIndex(new)
    out = new
    for hpa in new.of_kind(HorizontalPodAutoscaler):
        workload, old = index.workloads.get(hpa.workload), before.get(hpa.workload)
        if workload is None or old is None:
            continue
        replicas = min(max(old.spec.replicas, hpa.min_replicas), hpa.max_replicas)
        if replicas != workload.spec.replicas:
            spec = workload.spec.model_copy(update={"replicas": replicas})
            out = out.replace(workload, workload.model_copy(update={"spec": spec}))
    return out


@dataclass
class _Loop:
    """One autoscaler's memory between syncs."""

    state: algorithm.State = field(default_factory=algorithm.State)
    scaling: asyncio.Task[None] | None = None
    decisions: list[ScaleDecision] = field(default_factory=list)
    last: ScaleDecision | None = None


class Autoscaler:
    def __init__(
        self,
        mesh: Scaler,
        period_s: float,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
        audit_log: audit.AuditLog | None = None,
    ) -> None:
        self.mesh = mesh
        self.audit = audit_log  # each scale decision carried out (or not) is recorded here
        self.period_s = max(period_s, MIN_PERIOD_S)
        self.clock = clock
        self.sampler = Sampler(http, clock)
        self._loops: dict[str, _Loop] = {}

    async def run(self) -> None:
        """Sync every period until cancelled; an error in one sync is logged, not fatal."""
        try:
            while True:
                await asyncio.sleep(self.period_s)
                try:
                    await self.sync()
                except Exception:  # keep autoscaling whatever one sync hit
                    log.exception("autoscaler sync failed")
        finally:
            pending = [loop.scaling for loop in self._loops.values() if loop.scaling is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def sync(self) -> list[algorithm.Decision]:
        index = self.mesh.index
        decisions = []
        hpas = {hpa.name: hpa for hpa in index.config.of_kind(HorizontalPodAutoscaler)}
        for name in set(self._loops) - set(hpas):
            del self._loops[name]
        for name, hpa in hpas.items():
            loop = self._loops.setdefault(name, _Loop())
            if loop.scaling is not None and not loop.scaling.done():
                continue  # the previous decision is still being carried out
            workload = index.workloads.get(hpa.workload)
            if workload is None:
                continue
            decision = await self._decide(hpa, loop, workload.spec.replicas)
            decisions.append(decision)
        return decisions

    async def _decide(self, hpa: HorizontalPodAutoscaler, loop: _Loop, current: int) -> algorithm.Decision:
        scaling = hpa.scaling()
        workload = self.mesh.index.workloads[hpa.workload]
        replicas = [
            r for r in self.mesh.replicas.get(hpa.workload, []) if r.state not in (State.DRAINING, State.STOPPED)
        ]
        request = workload.spec.resources.requests.cpu
        rps, cpu = await self.sampler.sample(replicas, cpu_millicores(request) if request is not None else None)
        ready = [r.name for r in replicas if r.state is State.READY]
        unready = [r.name for r in replicas if r.state is not State.READY]
        spec = algorithm.Spec(
            min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas, behavior=hpa.behavior
        )
        before = loop.state
        decision, loop.state = algorithm.decide(
            hpa.workload,
            spec,
            current,
            ready,
            samples(scaling, rps, cpu),
            self.clock(),
            before,
            unready_pods=unready,
        )
        record = ScaleDecision(
            datetime.now(UTC).isoformat(timespec="seconds"),
            decision.current,
            decision.desired,
            decision.reason,
            [MetricReading(p.name, p.current, p.target, p.replicas) for p in decision.proposals],
        )
        loop.last = record
        if decision.desired != current:
            log.info("autoscaler %s: %s", hpa.name, decision.reason)
            loop.decisions = [*loop.decisions, record][-KEEP_DECISIONS:]
            loop.scaling = asyncio.create_task(
                self._scale(hpa.workload, decision.desired, loop, before), name=f"autoscale {hpa.workload}"
            )
        return decision

    async def _scale(self, service: str, replicas: int, loop: _Loop, before: algorithm.State) -> None:
        decision: dict[str, Any] = {k: v for k, v in to_json(loop.last).items() if k != "at"} if loop.last else {}
        outcome = "ok"
        try:
            changes = await self.mesh.scale(service, replicas, autoscaler=True)
            decision |= {k: v for k, v in changes.items() if k in audit.TOOK}
        except Exception as exc:  # the mesh stays as it was; the next sync decides again
            log.error("autoscaler could not scale %s to %d: %s", service, replicas, exc)
            loop.state = loop.state.after_failed_scale(before)
            outcome = audit.refused(exc)
        if self.audit is not None:
            self.audit.record("autoscaler", "autoscaler.scale", service, decision, outcome)
        self.sampler.keep_only(r.name for rs in self.mesh.replicas.values() for r in rs)

    def status(self) -> AutoscalingStatus:
        """Per autoscaler: the last decision (with its measured inputs) and the recent changes."""
        return AutoscalingStatus(
            self.period_s,
            {
                name: AutoscalerStatus(
                    loop.last, list(loop.decisions), loop.scaling is not None and not loop.scaling.done()
                )
                for name, loop in self._loops.items()
            },
        )
