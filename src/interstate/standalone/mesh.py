"""The standalone source of the control plane: desired config in, units to run and snapshots out.

Runs in the control-plane process. Holds the mesh config (saved to the run folder after every
change that took effect) and the units (replicas and the ingress) as the supervisor reports
them. It decides what runs — replica counts, each unit's ports, command and Envoy bootstrap — and
asks the supervisor (a `UnitRunner`, over `standalone.protocol`) to start, drain and stop units;
endpoints and proxies of what runs go to the core (`core.plane.ControlPlane.push`), which
compiles and serves them. Changes (apply, scale, fault, split) are all or nothing and recorded in
the audit trail. Called by the admin API, the autoscaler and `interstate.controlplane`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from interstate import audit
from interstate.ca.authority import utcnow
from interstate.compile import Proxy, Role, bootstrap, passthrough, policy_context
from interstate.core import observe
from interstate.core.control import INGRESS_SERIES, EnvoyAdmin
from interstate.core.plane import ControlPlane
from interstate.core.status import (
    ControlPlaneInfo,
    IdentityStatus,
    IngressStatus,
    MeshStatus,
    ReplicaState,
    Resilience,
    SupervisorInfo,
    XdsSummary,
)
from interstate.errors import InterstateError, PermanentError, UnknownService
from interstate.model.autoscaler import HorizontalPodAutoscaler
from interstate.model.gateway import Gateway
from interstate.model.index import Endpoint, MeshConfig, MeshIndex
from interstate.model.traffic_policy import Fault
from interstate.model.workload import Workload
from interstate.settings import Settings
from interstate.standalone import budget, changes, preflight, state
from interstate.standalone.autoscaler import Autoscaler, keep_autoscaled
from interstate.standalone.logs import ACCESS_LOG_SUFFIX, LogKeeper
from interstate.standalone.ports import PortAllocator, host_addresses, mesh_ports
from interstate.standalone.protocol import AppSpec, EnvoySpec, UnitSpec, UnitStatus
from interstate.standalone.units import app_command, app_environment, endpoint_of, replica_status, template_digest
from interstate.telemetry import envoy_admin
from interstate.telemetry import envoys as envoys_t
from interstate.telemetry.boundary import BoundaryLedger
from interstate.xds import resources as rt

log = logging.getLogger(__name__)

EDS_ACK_TIMEOUT_S = 2.0
RECONNECT_WAIT_S = 5.0  # after a control-plane restart, how long Envoys get to reconnect
INGRESS = "ingress"


class UnitRunner(Protocol):
    """What the control plane needs of the process supervisor."""

    async def start(self, spec: UnitSpec) -> UnitStatus: ...
    async def drain(self, names: list[str], timeout: float) -> None: ...
    async def stop(self, names: list[str]) -> None: ...


class StandaloneMesh:
    def __init__(
        self, settings: Settings, config: MeshConfig, core: ControlPlane, runner: UnitRunner, info: ControlPlaneInfo
    ) -> None:
        self.settings = settings
        self.config = config
        self.core = core
        self.runner = runner
        self.control_plane = info
        self.audit = core.audit
        self.registry = core.registry
        self.ports = PortAllocator(settings.host)
        self._host_addresses = host_addresses()  # read once: what a side-car never forwards to
        self.ports.take_all(mesh_ports(settings))
        self.ports.declare(config)
        self.max_replicas = settings.max_replicas or budget.derived()  # replicas of the mesh at most
        self.units: dict[str, UnitStatus] = {}
        self._index: tuple[MeshConfig, dict[str, tuple[Endpoint, ...]], MeshIndex] | None = None
        self._next_index: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self.http = envoy_admin.client()  # Envoy admins by socket, apps by TCP
        self.boundary = BoundaryLedger(
            settings.run_dir / "logs",
            self.registry,
            refused_route=passthrough.REFUSED_ROUTE,
            passed_route=passthrough.ROUTE,
            policy_routes={policy_context.REPLACED: "replaced", policy_context.REJECTED: "rejected"},
        )
        self.boundary.skip_existing()
        self.autoscaler = Autoscaler(self, settings.autoscale_period_s, self.http, audit_log=self.audit)
        self._autoscaling: asyncio.Task[None] | None = None
        self._rotation: asyncio.Task[None] | None = None
        self.logs = LogKeeper(
            settings.run_dir / "logs",
            self._access_log_writer,
            self.http,
            settings.log_max_bytes,
            settings.log_keep,
            before=self.boundary.refresh,
        )
        self._log_keeping: asyncio.Task[None] | None = None
        self.supervisor: SupervisorInfo | None = None  # its pid, and the units it adopted at its start
        self.reconnect_wait_s = RECONNECT_WAIT_S

    # ---- views -----------------------------------------------------------------------------
    @property
    def index(self) -> MeshIndex:
        """The mesh now, its config and the endpoints of its ready replicas: the push context
        that pushes, status and changes read. Built again only when either changed (reading it
        costs a pass over the units), so every read between two changes shares one index and the
        routes it has compiled (`MeshIndex.derived`)."""
        found: dict[str, list[Endpoint]] = {}
        for unit in self.units.values():
            ep = endpoint_of(unit, self.settings.host)
            if ep is not None:
                found.setdefault(ep.service, []).append(ep)
        endpoints = {k: tuple(sorted(v)) for k, v in sorted(found.items())}
        known = self._index
        if known is None or known[0] is not self.config or known[1] != endpoints:
            known = self._index = (self.config, endpoints, MeshIndex(self.config).with_endpoints(endpoints))
        return known[2]

    @property
    def mesh_dir(self) -> Path:
        return self.settings.mesh_dir

    def refresh_metrics(self) -> None:
        self.boundary.refresh()

    def envoy_admins(self) -> list[EnvoyAdmin]:
        """Every running Envoy of the mesh's workloads and the ingress, for the dashboard."""
        out = []
        for unit in self.envoys():
            socket, proxy = unit.admin, unit.spec.proxy
            if socket is None or proxy is None:
                continue
            series = unit.spec.service or INGRESS_SERIES
            out.append(EnvoyAdmin(series, unit.spec.name, proxy.node_id, socket))
        return out

    @property
    def replicas(self) -> dict[str, list[UnitStatus]]:
        """Units of each workload, in start order (the ingress is not a replica)."""
        out: dict[str, list[UnitStatus]] = {}
        for unit in sorted(self.units.values(), key=lambda u: (u.spec.service, u.spec.index)):
            if unit.spec.service:
                out.setdefault(unit.spec.service, []).append(unit)
        return out

    @property
    def ingress(self) -> UnitStatus | None:
        return self.units.get(INGRESS)

    def proxies(self) -> Iterable[Proxy]:
        gateway = bool(self.config.of_kind(Gateway))
        for unit in self.units.values():
            proxy = unit.spec.proxy
            if proxy is None or unit.state is ReplicaState.STOPPED:
                continue
            if unit.spec.name == INGRESS and not gateway:
                continue
            yield proxy

    # ---- the push --------------------------------------------------------------------------
    def push(self) -> None:
        """Every proxy's snapshot from one index (see `core.plane.ControlPlane.push`)."""
        self.core.push(self.index, self.proxies())

    def _pushed_after_change(self) -> None:
        try:
            self.push()
        except InterstateError as exc:
            log.error("push after a change failed: %s", exc)

    # ---- units reported by the supervisor ---------------------------------------------------
    def adopt(self, units: list[UnitStatus]) -> None:
        """Take over what the supervisor runs (at a control-plane (re)start): their ports stay
        taken and new replicas get indexes after theirs."""
        for unit in units:
            self.units[unit.spec.name] = unit
            self.ports.take_all(unit.spec.ports())
            if unit.spec.service:
                self._next_index[unit.spec.service] = max(
                    self._next_index.get(unit.spec.service, 0), unit.spec.index + 1
                )

    def unit_changed(self, unit: UnitStatus) -> None:
        """A `unit` event: a unit became ready, is restarting a child, or got a new pid."""
        known = self.units.get(unit.spec.name)
        if unit.state is ReplicaState.STOPPED:
            if known is not None:
                self._forget(unit.spec)
                self._pushed_after_change()
            return
        if known is None:
            self.adopt([unit])  # started for a control plane that died before it heard back
        elif known.state in (ReplicaState.DRAINING, ReplicaState.STOPPED):
            unit = unit.with_state(known.state)  # leaving: stays out of EDS whatever its children do
        else:
            self._audit_liveness(known, unit)
        self.units[unit.spec.name] = unit
        if known is None or known.state is not unit.state:
            self._pushed_after_change()

    def _audit_liveness(self, known: UnitStatus, unit: UnitStatus) -> None:
        """The trail records a replica that stopped answering, answers again, or was restarted
        for not answering (`standalone.replica`'s liveness check)."""
        name = unit.spec.name
        if unit.state is ReplicaState.UNRESPONSIVE and known.state is not ReplicaState.UNRESPONSIVE:
            self.audit.record(audit.SUPERVISOR, "replica.unresponsive", name, {"withdrawn": True})
        elif known.state is ReplicaState.UNRESPONSIVE and unit.state is ReplicaState.READY:
            self.audit.record(audit.SUPERVISOR, "replica.answers", name, {})
        if unit.restarts.get("unresponsive", 0) > known.restarts.get("unresponsive", 0):
            restarts = unit.restarts["unresponsive"]
            self.audit.record(audit.SUPERVISOR, "replica.restart", name, {"why": "unresponsive", "times": restarts})

    # ---- lifecycle -------------------------------------------------------------------------
    def start_background(self) -> None:
        """Certificate rotation and the autoscaler (both resume from what they measure now)."""
        self._rotation = asyncio.create_task(self.core.rotation(self._pushed_after_change), name="rotation")
        self._autoscaling = asyncio.create_task(self.autoscaler.run(), name="autoscaler")
        self._log_keeping = asyncio.create_task(self.logs.run(), name="logs")

    async def start_mesh(self, actor: str = audit.UP) -> dict[str, Any]:
        """Start every workload's replicas, then the ingress; return once all are ready (recorded
        as mesh.start, with the state of the trail it continues)."""
        detail: dict[str, Any] = {
            "config_sha256": audit.config_digest(self.config),
            "trail_before": audit.integrity(self.audit.path),
        }
        target = sorted(self.index.workloads)
        try:
            async with self._lock:
                await self._reconcile()  # adopted units that still fit the config are kept
                if self.index.gateway is not None and self.ingress is None:
                    await self._start_ingress()
                elif self.index.gateway is None and self.ingress is not None:
                    await self._stop_ingress()
                await self.core.settle(self._nodes())
        except BaseException as exc:
            self.audit.record(actor, "mesh.start", target, detail | audit.error_detail(exc), audit.refused(exc))
            raise
        replicas = sorted(u.spec.name for rs in self.replicas.values() for u in rs)
        adopted = {"adopted": self.supervisor.adopted} if self.supervisor and self.supervisor.adopted else {}
        detail |= {"replicas": replicas, "ingress": bool(self.ingress)} | adopted
        self.audit.record(actor, "mesh.start", target, detail)
        self.start_background()
        return {"replicas": len(replicas), "ingress": bool(self.ingress)}

    async def resume(self) -> None:
        """After a control-plane restart: serve what runs, recorded in the audit trail; then
        bring the mesh back to its config (a change cut short by the restart is finished or
        undone the same way any reconcile would)."""
        self.push()
        info = self.control_plane
        detail = {"pid": info.pid, "restarts": info.restarts, "previous": info.last_exit, "units": sorted(self.units)}
        self.audit.record(audit.SUPERVISOR, "control-plane.restart", "control-plane", detail)
        self.start_background()
        await self.core.wait_connected(self._nodes(), self.reconnect_wait_s)  # before anything is retired
        async with self._lock:
            try:
                leaving = [u.spec for u in self.units.values() if u.state is ReplicaState.DRAINING]
                if leaving:  # the previous control plane died while retiring them: finish it
                    await self._retire(leaving)
                await self._reconcile()
            except InterstateError as exc:
                log.error("could not bring the mesh back to its config after the restart: %s", exc)

    async def shutdown(self) -> list[str]:
        """Stop the loops, drain the ingress, drain and stop every replica; record mesh.stop."""
        for task in (self._autoscaling, self._rotation, self._log_keeping):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        async with self._lock:
            await self._stop_ingress()
            names = sorted(n for n in self.units if n != INGRESS)
            try:
                await self.runner.stop(names)
            except InterstateError as exc:
                log.error("stopping replicas: %s", exc)
            for name in names:
                self.units.pop(name, None)
        self.audit.record(audit.UP, "mesh.stop", sorted(self.index.workloads), {"replicas_stopped": names})
        await self.http.aclose()
        return names

    # ---- the ingress -----------------------------------------------------------------------
    async def _start_ingress(self) -> None:
        proxy = self._logged(Proxy.ingress(self.settings.ingress_port))
        spec = UnitSpec(INGRESS, "", 0, "", "", proxy, None, self._envoy_spec(proxy))
        await self._start([spec])

    async def _stop_ingress(self) -> None:
        unit = self.units.get(INGRESS)
        if unit is None:
            return
        self.units[INGRESS] = unit.with_state(ReplicaState.DRAINING)
        try:
            await self.runner.drain([INGRESS], min(self.settings.drain_timeout_s, 2.0))
            await self.runner.stop([INGRESS])
        finally:
            self._forget(unit.spec)
            self.push()

    # ---- changes as the audit trail records them ----------------------------------------------
    async def apply(self, config: MeshConfig, actor: str = audit.SYSTEM) -> dict[str, Any]:
        """`_apply`, recorded as config.apply or config.apply.rejected (with the error)."""
        before = self.config
        try:
            changes = await self._apply(config)
        except BaseException as exc:
            detail = audit.apply_detail(before, config) | audit.error_detail(exc)
            self.audit.record(actor, "config.apply.rejected", audit.touched(detail), detail, audit.refused(exc))
            raise
        detail = audit.apply_detail(before, self.config) | changes
        self.audit.record(actor, "config.apply", audit.touched(detail), detail)
        return changes

    async def scale(
        self, service: str, replicas: int, autoscaler: bool = False, actor: str = audit.SYSTEM
    ) -> dict[str, Any]:
        """`_scale`, recorded as replicas.scale (the autoscaler records its own decisions)."""
        if autoscaler:
            return await self._scale(service, replicas, autoscaler=True)
        workload = self.index.workloads.get(service)
        detail = {"from": None if workload is None else workload.spec.replicas, "to": replicas}
        return await self._recorded(actor, "replicas.scale", service, detail, self._scale(service, replicas))

    async def set_fault(self, service: str, fault: Fault | None, actor: str = audit.SYSTEM) -> dict[str, Any]:
        if fault is None:
            return await self._recorded(actor, "fault.clear", service, {}, self._set_fault(service, None))
        detail = {"fault": fault.describe()}
        return await self._recorded(actor, "fault.set", service, detail, self._set_fault(service, fault))

    async def set_split(self, service: str, weights: dict[str, int], actor: str = audit.SYSTEM) -> dict[str, Any]:
        detail = {"weights": weights}
        return await self._recorded(actor, "split.set", service, detail, self._set_split(service, weights))

    async def _recorded(
        self, actor: str, action: str, service: str, detail: dict[str, Any], change: Awaitable[dict[str, Any]]
    ) -> dict[str, Any]:
        try:
            result = await change
        except BaseException as exc:
            self.audit.record(actor, action, service, detail | audit.error_detail(exc), audit.refused(exc))
            raise
        self.audit.record(actor, action, service, detail | {k: v for k, v in result.items() if k in audit.TOOK})
        return result

    # ---- changes ---------------------------------------------------------------------------
    def _set_config(self, config: MeshConfig) -> None:
        self.config = config
        self.ports.declare(config)
        state.save_config(self.settings.run_dir, config)

    async def _apply(self, change: MeshConfig | Callable[[MeshConfig], MeshConfig]) -> dict[str, Any]:
        """Make a new config the running mesh — `change` itself, or `change(running config)`,
        computed under the lock so no concurrent change is lost — or leave the running mesh as
        it was: if compiling fails, a new replica does not start, or any Envoy rejects its new
        config, the previous config is put back (replicas started for the new one are stopped)
        and the error raised. Autoscaled workloads keep their current replica counts."""
        async with self._lock:
            previous = self.config
            config = change(previous) if callable(change) else change
            if config is previous:
                return {"started": [], "stopped": []}
            preflight.check(config, self.settings.mesh_dir)
            preflight.check_ports(config, self.ports.owners_but_declared(), self.ports.declared(), self.settings.host)
            config = keep_autoscaled(previous, config)
            budget.check(config, self.max_replicas)
            header, new_header = MeshIndex(previous).mesh.policy_header, MeshIndex(config).mesh.policy_header
            if new_header != header and self.units:
                raise PermanentError(
                    f"Mesh spec.policyHeader cannot change from {header!r} to {new_header!r} while the mesh runs "
                    "(every Envoy registered it at start); stop the mesh and start it again"
                )
            self.core.check_trust_domain(MeshIndex(config))
            self.config = config
            try:
                self.push()
                changes = await self._reconcile()
                if self.index.gateway is not None and self.ingress is None:
                    await self._start_ingress()
                await self.core.settle(self._nodes())
            except InterstateError:
                await self._restore(previous)
                raise
            self._set_config(config)
            if self.index.gateway is None and self.ingress is not None:
                await self._stop_ingress()
            return changes

    async def _restore(self, previous: MeshConfig) -> None:
        self.config = previous
        try:
            self.push()
            await self._reconcile()
        except InterstateError as exc:
            log.error("could not fully restore the previous mesh: %s", exc)

    async def _scale(self, service: str, replicas: int, autoscaler: bool = False) -> dict[str, Any]:
        """Run `replicas` replicas of `service`. A workload with a HorizontalPodAutoscaler is
        scaled by its autoscaler only (`autoscaler=True`): a manual count would be undone."""
        if not autoscaler:
            owners = [h.name for h in self.config.of_kind(HorizontalPodAutoscaler) if h.workload == service]
            if owners:
                raise PermanentError(
                    f"{service} is scaled by its HorizontalPodAutoscaler {owners[0]}; change its "
                    "minReplicas/maxReplicas (interstate apply) instead"
                )
        async with self._lock:
            workload = self.workload(service)
            wanted = budget.counts(self.config) | {service: replicas}
            if sum(wanted.values()) > self.max_replicas:
                if not autoscaler:
                    raise PermanentError(
                        f"{service}: {replicas} replicas refused: {budget.over(wanted, self.max_replicas)}"
                    )
                replicas = budget.clamp(service, replicas, wanted, self.max_replicas)
                log.warning(
                    "autoscaler: %s clamped to %d replicas by the replica budget (%d)",
                    service,
                    replicas,
                    self.max_replicas,
                )
            spec = workload.spec.model_copy(update={"replicas": replicas})
            previous = self.config
            self.config = previous.replace(workload, workload.model_copy(update={"spec": spec}))
            try:
                changes = await self._reconcile()
            except InterstateError:  # a replica did not start: the mesh stays as it was
                await self._restore(previous)
                raise
            self._set_config(self.config)
            return changes

    async def _set_fault(self, service: str, fault: Fault | None) -> dict[str, Any]:
        """Turn a rehearsal fault for calls to `service` on (or off, with None): the service's
        TrafficPolicy gets (or loses) its `fault` section; only routes change."""
        self.workload(service)

        await self._apply(lambda config: changes.with_fault(config, service, fault))
        return {"service": service, "fault": fault is not None}

    async def _set_split(self, service: str, weights: dict[str, int]) -> dict[str, Any]:
        """Share calls to `service` among backends by weight ({backend: percent}), live. Raises
        pydantic's ValidationError for weights that do not add up."""
        self.workload(service)
        for backend in weights:
            self.workload(backend)
        await self._apply(lambda config: changes.with_split(config, service, weights))
        return {"service": service, "weights": weights}

    def workload(self, service: str) -> Workload:
        workload = self.index.workloads.get(service)
        if workload is None:
            known = ", ".join(sorted(self.index.workloads)) or "none"
            raise UnknownService(f"no workload named {service!r}; known: {known}")
        return workload

    # ---- replicas --------------------------------------------------------------------------
    async def _reconcile(self) -> dict[str, Any]:
        """Start and stop replicas until each workload runs spec.replicas of its current spec."""
        workloads = self.index.workloads
        started: list[UnitSpec] = []
        retiring: list[UnitSpec] = []
        for service, units in self.replicas.items():
            live = [u.spec for u in units if u.state not in (ReplicaState.STOPPED, ReplicaState.DRAINING)]
            workload = workloads.get(service)
            if workload is None:
                retiring += live
                continue
            template = template_digest(workload)
            current = [s for s in live if s.template == template]
            retiring += [s for s in live if s.template != template]  # replaced: new ones first
            want = workload.spec.replicas
            if len(current) > want:
                retiring += sorted(current, key=lambda s: s.index)[want:]
            started += [self._new_replica(workload) for _ in range(max(0, want - len(current)))]
        for service, workload in workloads.items():
            if service not in self.replicas:
                started += [self._new_replica(workload) for _ in range(workload.spec.replicas)]
        if started:
            await self._start(started)
        if retiring:
            await self._retire(retiring)
        return {"started": [s.name for s in started], "stopped": [s.name for s in retiring]}

    async def _start(self, specs: list[UnitSpec]) -> None:
        """Start units (their snapshots are set first, so new Envoys find them when they
        connect); a unit that fails to start is forgotten and the first error raised."""
        for spec in specs:
            self.units[spec.name] = UnitStatus(spec)
        self.push()
        results = await asyncio.gather(*(self.runner.start(s) for s in specs), return_exceptions=True)
        failed: list[BaseException] = []
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(result)
                self._forget(spec)
            else:
                self.units[spec.name] = result
        self.push()
        if failed:
            raise failed[0]

    def _new_replica(self, workload: Workload) -> UnitSpec:
        index = self._next_index.get(workload.name, 0)
        self._next_index[workload.name] = index + 1
        name = f"{workload.name}-{index}"
        app_port = self.ports.take(owner=f"{name}'s app")
        proxy = envoy = None
        if workload.injected:
            proxy = self._logged(
                Proxy.sidecar(
                    workload.name,
                    index,
                    inbound_port=self.ports.take(owner=f"{name}'s side-car (inbound)"),
                    outbound_port=self.ports.take(owner=f"{name}'s side-car (outbound)"),
                    app_port=app_port,
                )
            )
            envoy = self._envoy_spec(proxy)
        env = app_environment(workload, index, app_port, proxy.outbound_port if proxy else None)
        probe = workload.spec.readiness_probe
        app = AppSpec(
            argv=app_command(workload, env),
            env=env,
            cwd=str(self.settings.mesh_dir / (workload.spec.runs().working_dir or ".")),
            log=str(self.settings.run_dir / "logs" / f"{name}.app.log"),
            port=app_port,
            probe_path=probe.http_get.path if probe.http_get is not None else None,
            ready_timeout_s=probe.timeout.total_seconds()
            if probe.timeout is not None
            else self.settings.ready_timeout_s,
        )
        return UnitSpec(name, workload.name, index, workload.spec.version, template_digest(workload), proxy, app, envoy)

    def _logged(self, proxy: Proxy) -> Proxy:
        """`proxy` as it runs on this host: writing its access log to a file of the run folder
        (rotated by `LogKeeper`), and refusing to forward to this host's addresses (`egress`)."""
        stem = proxy.node_id.replace("~", "-")
        path = self.settings.run_dir / "logs" / f"{stem}{ACCESS_LOG_SUFFIX}"
        return dataclasses.replace(proxy, access_log=str(path), host_addresses=self._host_addresses)

    def _envoy_spec(self, proxy: Proxy) -> EnvoySpec:
        """An Envoy for `proxy`: its admin socket, bootstrap certificate and bootstrap file."""
        identity = self.core.identity
        assert identity is not None, "the core has not started"
        stem = proxy.node_id.replace("~", "-")
        logs = self.settings.run_dir / "logs"
        socket = envoy_admin.socket_path(self.settings.run_dir / "envoy", stem)
        config = bootstrap.build(
            proxy.node_id,
            proxy.service,
            socket,
            self.settings.host,
            self.core.port,
            identity.bootstrap_tls(proxy),
            outlier_event_log=str(logs / f"{stem}.outlier.log"),
            joined_headers=(self.index.mesh.policy_header,),
            max_connections=self.settings.max_ingress_connections if proxy.role is Role.INGRESS else None,
        )
        path = self.settings.run_dir / "envoy" / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=1))
        return EnvoySpec(
            str(path),
            socket,
            str(logs / f"{stem}.envoy-output.log"),
            str(logs / f"{stem}.outlier.log"),
            proxy.access_log,
        )

    async def _retire(self, specs: list[UnitSpec]) -> None:
        """Withdraw endpoints, wait until every proxy ACKed that, drain, then stop."""
        for spec in specs:
            unit = self.units.get(spec.name)
            if unit is not None:
                self.units[spec.name] = unit.with_state(ReplicaState.DRAINING)
        self.push()
        if not await self.core.wait_acked(self._nodes(), rt.ENDPOINT, EDS_ACK_TIMEOUT_S):
            log.warning("not every proxy ACKed the endpoint removal within %.0fs", EDS_ACK_TIMEOUT_S)
        names = [s.name for s in specs]
        try:
            await self.runner.drain(names, self.settings.drain_timeout_s)
            await self.runner.stop(names)
        finally:
            for spec in specs:
                self._forget(spec)
            self.push()

    def _forget(self, spec: UnitSpec) -> None:
        self.units.pop(spec.name, None)
        if spec.proxy is not None and self.core.identity is not None:
            self.core.identity.forget_bootstrap(spec.proxy.node_id)
        self.ports.release(*(p for p in spec.ports() if p != self.settings.ingress_port))  # the mesh's for good

    def _nodes(self) -> list[str]:
        return [p.node_id for p in self.proxies()]

    # ---- status ----------------------------------------------------------------------------
    def envoys(self) -> list[UnitStatus]:
        return [u for u in self.units.values() if u.spec.envoy is not None and u.state is not ReplicaState.STOPPED]

    async def resilience(self) -> dict[str, Resilience]:
        """Per service, what its callers' Envoys saw (`core.observe.resilience`)."""
        callers = [
            observe.Caller(
                u.spec.proxy,
                envoys_t.Caller(
                    u.spec.proxy.node_id, admin, Path(u.spec.envoy.requests_log), Path(u.spec.envoy.outlier_log)
                ),
            )
            for u in self.envoys()
            if u.spec.proxy is not None and u.spec.envoy is not None and (admin := u.admin) is not None
        ]
        index = self.index
        replica_at = {
            f"{ep.address}:{ep.port}": f"{ep.service}-{ep.replica}" for eps in index.endpoints.values() for ep in eps
        }
        return await observe.resilience(self.http, index, callers, replica_at)

    def certificates(self) -> IdentityStatus | None:
        identity = self.core.identity
        return None if identity is None else identity.status(utcnow())

    def status(self) -> MeshStatus:
        xds = self.core.ads.status()
        replicas = self.replicas
        services = observe.services(
            self.index,
            {
                name: [replica_status(u, xds.get(u.spec.proxy.node_id) if u.spec.proxy else None) for u in units]
                for name, units in replicas.items()
            },
        )
        ingress = self.ingress
        ingress_status = None
        if ingress is not None and ingress.spec.envoy is not None and ingress.spec.proxy is not None:
            ingress_status = IngressStatus(
                f"http://{self.settings.host}:{self.settings.ingress_port}",
                ingress.spec.envoy.admin,
                ingress.envoy_pid,
                xds.get(ingress.spec.proxy.node_id),
            )
        return MeshStatus(
            services,
            XdsSummary(self.core.port, len(xds)),
            self.control_plane,
            self.supervisor,
            ingress_status,
            self.boundary.summary(),
            self.autoscaler.status(),
            self.logs.use(),
            budget.status(
                self.config, self.max_replicas, [(u.app_pid, u.envoy_pid) for us in replicas.values() for u in us]
            ),
        )

    def _access_log_writer(self, path: Path) -> str | None:
        """The admin socket of the running Envoy that writes the access log `path` (for `LogKeeper`)."""
        for unit in self.envoys():
            if unit.spec.envoy is not None and Path(unit.spec.envoy.requests_log) == path:
                return unit.admin
        return None
