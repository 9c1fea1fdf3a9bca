"""The standalone control plane: desired mesh in, running processes and pushed snapshots out.

Holds the current validated `MeshConfig` and the running replicas; every change (apply, scale,
a replica becoming ready or crashing) recompiles all proxies from one `MeshIndex` and sets their
snapshots in the cache, which the ADS server streams to the Envoys. Called by `standalone.run`
and by the admin API; calls compile, xds and the process helpers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from interstate import audit
from interstate.ca.authority import utcnow
from interstate.compile import Proxy, bootstrap, clusters, names, passthrough, policy_context
from interstate.errors import InterstateError, PermanentError
from interstate.model.autoscaler import HorizontalPodAutoscaler
from interstate.model.base import Metadata
from interstate.model.gateway import Gateway
from interstate.model.index import Endpoint, MeshConfig, MeshIndex
from interstate.model.traffic_policy import Destination, Fault, FaultAt, TrafficPolicy, TrafficPolicySpec
from interstate.model.traffic_split import Backend, TrafficSplit, TrafficSplitSpec
from interstate.model.workload import Workload
from interstate.settings import Settings
from interstate.standalone import preflight
from interstate.standalone.autoscaler import Autoscaler, keep_autoscaled
from interstate.standalone.envoy import find_envoy
from interstate.standalone.identity import MeshIdentity
from interstate.standalone.ports import PortAllocator
from interstate.standalone.process import port_is_free
from interstate.standalone.proxy import EnvoyProcess, log_paths
from interstate.standalone.replica import Replica, State
from interstate.telemetry import envoys as envoys_t
from interstate.telemetry.boundary import BoundaryLedger
from interstate.xds import resources as rt
from interstate.xds.cache import SnapshotCache
from interstate.xds.incremental import SnapshotBuilder
from interstate.xds.server import AdsServer

log = logging.getLogger(__name__)

EDS_ACK_TIMEOUT_S = 2.0
SETTLE_TIMEOUT_S = 10.0  # how long apply/up wait for every Envoy to ACK or NACK


def describe_fault(fault: Fault) -> str:
    parts = []
    if fault.abort is not None:
        parts.append(f"{fault.abort.percent}% of calls get {fault.abort.status}")
    if fault.delay is not None:
        parts.append(f"{fault.delay.percent}% delayed {fault.delay.fixed_delay.total_seconds():g}s")
    where = "by the service's own side-cars" if fault.at is FaultAt.SERVICE else "by the callers' side-cars"
    return ", ".join(parts) + f" ({where})"


class UnknownService(PermanentError):
    pass


class Rejected(PermanentError):
    """Envoy refused the configuration compiled for it (a NACK); the previous one stays."""

    def __init__(self, nacks: dict[str, list[str]]) -> None:
        self.nacks = nacks
        detail = "; ".join(f"{node}: {' | '.join(msgs)}" for node, msgs in sorted(nacks.items()))
        super().__init__(f"Envoy rejected the new configuration ({detail}); the previous one is in force")


class Supervisor:
    def __init__(self, settings: Settings, config: MeshConfig) -> None:
        self.settings = settings
        self.config = config
        self.audit = audit.AuditLog(settings.run_dir / audit.FILE_NAME)
        self.registry = CollectorRegistry()
        self.cache = SnapshotCache()
        self.ads = AdsServer(self.cache, self.registry, on_nack=self._record_nack)
        self.snapshots = SnapshotBuilder()
        self.ports = PortAllocator(settings.host)
        self.replicas: dict[str, list[Replica]] = {}
        self.ingress: EnvoyProcess | None = None
        self.ingress_port = 0
        self.xds_port = 0
        self._next_index: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._http = httpx.AsyncClient(trust_env=False)
        self._envoy: Path | None = None
        self.identity: MeshIdentity | None = None
        self._rotation: asyncio.Task[None] | None = None
        self.pushes = Counter("interstate_snapshot_updates", "proxy snapshots changed", registry=self.registry)
        self.boundary = BoundaryLedger(
            settings.run_dir / "logs",
            self.registry,
            refused_route=passthrough.REFUSED_ROUTE,
            passed_route=passthrough.ROUTE,
            policy_routes={policy_context.REPLACED: "replaced", policy_context.REJECTED: "rejected"},
        )
        self.boundary.skip_existing()
        self.autoscaler = Autoscaler(self, settings.autoscale_period_s, self._http, audit_log=self.audit)
        self._autoscaling: asyncio.Task[None] | None = None

    # ---- views -----------------------------------------------------------------------------
    @property
    def index(self) -> MeshIndex:
        endpoints: dict[str, list[Endpoint]] = {}
        for service, replicas in self.replicas.items():
            for replica in replicas:
                ep = replica.endpoint
                if ep is not None:
                    endpoints.setdefault(service, []).append(ep)
        return MeshIndex(self.config).with_endpoints({k: tuple(v) for k, v in endpoints.items()})

    def proxies(self) -> Iterable[Proxy]:
        for replicas in self.replicas.values():
            for replica in replicas:
                if replica.proxy is not None and replica.state is not State.STOPPED:
                    yield replica.proxy
        if self.ingress is not None and self.config.of_kind(Gateway):
            yield self.ingress.proxy

    # ---- the push --------------------------------------------------------------------------
    def push(self) -> None:
        """Snapshots for every proxy from one index (only what changed is recompiled: see
        `xds.incremental`); set changed ones. All or nothing. Certificates past half their life
        are re-issued on the way (that is rotation)."""
        index = self.index
        identity = self.identity
        assert identity is not None, "start_control_plane() first"
        now = utcnow()
        snapshots = self.snapshots.build(index, self.proxies(), lambda p: identity.credentials(p, now))
        identity.certs.keep_only(set(snapshots))
        self.snapshots.forget(snapshots)
        for node_id, snapshot in snapshots.items():
            if self.cache.set(node_id, snapshot):
                self.pushes.inc()
        for node_id in self.cache.nodes():
            if node_id not in snapshots:
                self.cache.remove(node_id)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start_control_plane(self) -> int:
        for what, port in (("xDS", self.settings.xds_port), ("ingress", self.settings.ingress_port)):
            if port and not port_is_free(self.settings.host, port):
                raise PermanentError(
                    f"{what} port {port} on {self.settings.host} is in use; choose another "
                    f"(--{what.lower()}-port) or let interstate pick free ports (--auto-ports)"
                )
        self._envoy = find_envoy(self.settings.envoy_path)
        self.identity = MeshIdentity(self.settings, self.index.mesh.trust_domain)
        self.xds_port = await self.ads.start(
            self.settings.host, self.ports.take(self.settings.xds_port), self.identity.server_credentials()
        )
        self._rotation = asyncio.create_task(self._rotate(), name="certificate rotation")
        return self.xds_port

    async def _rotate(self) -> None:
        """Push whenever a certificate reaches half its life; the push re-issues it (SDS only)."""
        assert self.identity is not None
        while True:
            due = self.identity.certs.next_rotation()
            wait = 1.0 if due is None else (due - utcnow()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.05), 30.0))
            if due is not None and utcnow() >= due:
                self._replica_changed()

    def _make_envoy(self, proxy: Proxy) -> EnvoyProcess:
        assert self._envoy is not None and self.identity is not None
        admin_port = self.ports.take()
        config = bootstrap.build(
            proxy.node_id,
            proxy.service,
            admin_port,
            self.settings.host,
            self.xds_port,
            self.identity.bootstrap_tls(proxy),
            outlier_event_log=str(log_paths(self.settings, proxy)[1]),
            joined_headers=(self.index.mesh.policy_header,),
        )
        return EnvoyProcess(proxy, admin_port, config, self._envoy, self.settings, self._http)

    async def _start_mesh(self) -> None:
        """Start every workload's replicas, then the ingress; returns when all are ready."""
        async with self._lock:
            await self._reconcile()
            if self.index.gateway is not None:
                await self._start_ingress()
            await self._settle()
        self._autoscaling = asyncio.create_task(self.autoscaler.run(), name="autoscaler")

    async def _start_ingress(self) -> None:
        assert self._envoy is not None
        self.ingress_port = self.ports.take(self.settings.ingress_port)
        proxy = Proxy.ingress(self.ingress_port)
        self.ingress = self._make_envoy(proxy)
        self.push()
        await self.ingress.start()

    async def _stop_ingress(self) -> None:
        if self.ingress is not None:
            await self.ingress.drain(min(self.settings.drain_timeout_s, 2.0))
            await self.ingress.stop()
            self.ports.release(self.ingress_port, self.ingress.admin_port)
            self.ingress = None
            self.push()

    async def shutdown(self) -> None:
        """Drain the ingress, stop every app and side-car, then the xDS server."""
        if self._autoscaling is not None:
            self._autoscaling.cancel()
            await asyncio.gather(self._autoscaling, return_exceptions=True)
        await self._stop_ingress()
        replicas = [r for rs in self.replicas.values() for r in rs]
        await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
        self.replicas.clear()
        if self._rotation is not None:
            self._rotation.cancel()
        await self.ads.stop()
        stopped = {"replicas_stopped": sorted(r.name for r in replicas)}
        self.audit.record(audit.UP, "mesh.stop", sorted(self.index.workloads), stopped)
        await self._http.aclose()

    # ---- changes as the audit trail records them: who asked, what, whether it took effect -----
    async def start_mesh(self, actor: str = audit.UP) -> None:
        """`_start_mesh`, recorded as mesh.start (with the state of the trail it continues)."""
        detail = {"config_sha256": audit.config_digest(self.config), "trail_before": audit.integrity(self.audit.path)}
        target = sorted(self.index.workloads)
        try:
            await self._start_mesh()
        except BaseException as exc:
            self.audit.record(actor, "mesh.start", target, detail | audit.error_detail(exc), audit.refused(exc))
            raise
        replicas = sorted(r.name for rs in self.replicas.values() for r in rs)
        self.audit.record(actor, "mesh.start", target, detail | {"replicas": replicas, "ingress": bool(self.ingress)})

    async def apply(self, config: MeshConfig, actor: str = audit.SYSTEM) -> dict[str, Any]:
        """`_apply`, recorded as config.apply (refs added, changed, removed; the applied config's
        sha256; replicas started and stopped) or config.apply.rejected (with the error)."""
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
        """`_scale`, recorded as replicas.scale with the count before and after (the autoscaler
        records its decisions itself, with their inputs, as autoscaler.scale)."""
        if autoscaler:
            return await self._scale(service, replicas, autoscaler=True)
        workload = self.index.workloads.get(service)
        detail = {"from": None if workload is None else workload.spec.replicas, "to": replicas}
        return await self._recorded(actor, "replicas.scale", service, detail, self._scale(service, replicas))

    async def set_fault(self, service: str, fault: Fault | None, actor: str = audit.SYSTEM) -> dict[str, Any]:
        """`_set_fault`, recorded as fault.set (what it does, in words) or fault.clear."""
        if fault is None:
            return await self._recorded(actor, "fault.clear", service, {}, self._set_fault(service, None))
        detail = {"fault": describe_fault(fault)}
        return await self._recorded(actor, "fault.set", service, detail, self._set_fault(service, fault))

    async def set_split(self, service: str, weights: dict[str, int], actor: str = audit.SYSTEM) -> dict[str, Any]:
        """`_set_split`, recorded as split.set with the weights."""
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

    def _record_nack(self, node: str, type_short: str, version: str, message: str) -> None:
        """The ADS server's NACK callback: `node` refused its new `type_short` configuration."""
        detail = {"node": node, "type": type_short, "version": version, "message": message}
        outcome = f"refused: Envoy kept its previous {type_short} configuration"
        self.audit.record(f"envoy {node}", "xds.nack", node, detail, outcome)

    # ---- changes ---------------------------------------------------------------------------
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
            config = keep_autoscaled(previous, config)
            header, new_header = MeshIndex(previous).mesh.policy_header, MeshIndex(config).mesh.policy_header
            if new_header != header and self._envoys():
                raise PermanentError(
                    f"Mesh spec.policyHeader cannot change from {header!r} to {new_header!r} while the mesh runs "
                    "(every Envoy registered it at start); stop the mesh and start it again"
                )
            self.config = config
            try:
                self.push()
                changes = await self._reconcile()
                if self.index.gateway is not None and self.ingress is None:
                    await self._start_ingress()
                await self._settle()
            except InterstateError:
                await self._restore(previous)
                raise
            if self.index.gateway is None and self.ingress is not None:
                await self._stop_ingress()
            return changes

    async def _settle(self) -> None:
        """Wait until every Envoy answered its new snapshot; raise `Rejected` on any NACK."""
        nacks = await self.ads.wait_settled([p.node_id for p in self.proxies()], SETTLE_TIMEOUT_S)
        if nacks:
            raise Rejected(nacks)

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
            spec = workload.spec.model_copy(update={"replicas": replicas})
            updated = workload.model_copy(update={"spec": spec})
            previous = self.config
            self.config = previous.replace(workload, updated)
            try:
                return await self._reconcile()
            except InterstateError:  # a replica did not start: the mesh stays as it was
                await self._restore(previous)
                raise

    async def _set_fault(self, service: str, fault: Fault | None) -> dict[str, Any]:
        """Turn a rehearsal fault for calls to `service` on (or off, with None): the service's
        TrafficPolicy gets (or loses) its `fault` section; only routes change."""
        self.workload(service)

        def with_fault(config: MeshConfig) -> MeshConfig:
            policy = MeshIndex(config).traffic_policies.get(service)
            if policy is not None:
                spec = policy.spec.model_copy(update={"fault": fault})
                return config.replace(policy, policy.model_copy(update={"spec": spec}))
            if fault is None:
                return config  # nothing to end
            return config.add(
                TrafficPolicy(
                    api_version=TrafficPolicy.API_VERSION,
                    kind=TrafficPolicy.KIND,
                    metadata=Metadata(name=f"{service}-rehearsal"),
                    spec=TrafficPolicySpec(destination=Destination(service=service), fault=fault),
                )
            )

        await self._apply(with_fault)
        return {"service": service, "fault": fault is not None}

    async def _set_split(self, service: str, weights: dict[str, int]) -> dict[str, Any]:
        """Share calls to `service` among backends by weight ({backend: percent}), live: the
        service's TrafficSplit gets these backends (one is created if it has none); only routes
        change. Raises pydantic's ValidationError for weights that do not add up."""
        self.workload(service)
        for backend in weights:
            self.workload(backend)
        backends = [Backend(service=b, weight=w) for b, w in weights.items()]

        def with_split(config: MeshConfig) -> MeshConfig:
            split = MeshIndex(config).traffic_splits.get(service)
            if split is not None:
                pin = split.spec.pin if split.spec.pin and split.spec.pin.backend in weights else None
                spec = TrafficSplitSpec(service=service, backends=backends, pin=pin, sticky_by=split.spec.sticky_by)
                return config.replace(split, split.model_copy(update={"spec": spec}))
            return config.add(
                TrafficSplit(
                    api_version=TrafficSplit.API_VERSION,
                    kind=TrafficSplit.KIND,
                    metadata=Metadata(name=f"{service}-split"),
                    spec=TrafficSplitSpec(service=service, backends=backends),
                )
            )

        await self._apply(with_split)
        return {"service": service, "weights": weights}

    def workload(self, service: str) -> Workload:
        workload = self.index.workloads.get(service)
        if workload is None:
            known = ", ".join(sorted(self.index.workloads)) or "none"
            raise UnknownService(f"no workload named {service!r}; known: {known}")
        return workload

    async def _reconcile(self) -> dict[str, Any]:
        """Start and stop replicas until each workload runs spec.replicas of its current spec."""
        workloads = self.index.workloads
        started: list[Replica] = []
        retiring: list[Replica] = []
        for service in list(self.replicas):
            if service not in workloads:
                retiring += self.replicas[service]
        for service, workload in workloads.items():
            live = [r for r in self.replicas.get(service, []) if r.state is not State.STOPPED]
            current = [r for r in live if r.workload.same_template(workload)]
            outdated = [r for r in live if not r.workload.same_template(workload)]
            want = workload.spec.replicas
            started += [self._new_replica(workload) for _ in range(max(0, want - len(current)))]
            if len(current) > want:
                retiring += sorted(current, key=lambda r: r.index)[want:]
            retiring += outdated  # replaced by new ones: started first, stopped after
        if started:
            self.push()  # new side-cars find their snapshot when they connect
            results = await asyncio.gather(*(r.start() for r in started), return_exceptions=True)
            failed = [(r, e) for r, e in zip(started, results, strict=True) if isinstance(e, BaseException)]
            for replica, _ in failed:
                await self._remove(replica)
            self.push()
            if failed:
                raise failed[0][1]
        if retiring:
            await self._retire(retiring)
        return {"started": [r.name for r in started], "stopped": [r.name for r in retiring]}

    def _new_replica(self, workload: Workload) -> Replica:
        assert self._envoy is not None
        index = self._next_index.get(workload.name, 0)
        self._next_index[workload.name] = index + 1
        replica = Replica(
            workload, index, self.settings, self.ports, self._make_envoy, self._http, self._replica_changed
        )
        self.replicas.setdefault(workload.name, []).append(replica)
        return replica

    def _replica_changed(self) -> None:
        try:
            self.push()
        except InterstateError as exc:
            log.error("push after a replica change failed: %s", exc)

    async def _retire(self, replicas: list[Replica]) -> None:
        """Withdraw endpoints, wait until every proxy ACKed that, drain, then stop."""
        for replica in replicas:
            replica.state = State.DRAINING
        self.push()
        nodes = [p.node_id for p in self.proxies()]
        if not await self.ads.wait_acked(nodes, rt.ENDPOINT, EDS_ACK_TIMEOUT_S):
            log.warning("not every proxy ACKed the endpoint removal within %.0fs", EDS_ACK_TIMEOUT_S)
        await asyncio.gather(*(r.drain() for r in replicas))
        for replica in replicas:
            await self._remove(replica)
        self.push()

    async def _remove(self, replica: Replica) -> None:
        await replica.stop()
        group = self.replicas.get(replica.workload.name, [])
        if replica in group:
            group.remove(replica)
        if not group:
            self.replicas.pop(replica.workload.name, None)

    # ---- status ----------------------------------------------------------------------------
    def _envoys(self) -> list[EnvoyProcess]:
        sidecars = [r.sidecar for rs in self.replicas.values() for r in rs if r.sidecar is not None]
        return [e for e in [*sidecars, self.ingress] if e is not None and e.child.running]

    async def resilience(self) -> dict[str, dict[str, Any]]:
        """Per service, what its callers' Envoys saw: retries (and those the budget refused),
        overflows, timeouts, who is ejected now and since when, recent failures in words."""
        index = self.index
        envoys = self._envoys()
        replica_at = {
            f"{ep.address}:{ep.port}": f"{ep.service}-{ep.replica}" for eps in index.endpoints.values() for ep in eps
        }
        out: dict[str, dict[str, Any]] = {}
        for service in index.workloads:
            cluster = names.outbound_cluster(service)
            callers = [
                envoys_t.Caller(e.proxy.node_id, e.admin_url, e.log_path, e.outlier_log)
                for e in envoys
                if service in clusters.callees(index, e.proxy)
            ]
            if not callers:
                continue
            counts = await asyncio.gather(*(envoys_t.counters(self._http, c, cluster) for c in callers))
            totals = {key: sum(c.get(key, 0) for c in counts) for key in envoys_t.COUNTERS}
            ejected = [
                e | {"replica": replica_at.get(e["host"], "?")} for c in callers for e in envoys_t.ejections(c, cluster)
            ]
            policy = index.traffic_policies.get(service)
            fault = policy.spec.fault if policy else None
            out[service] = {
                "callers": [c.node for c in callers],
                "counters": totals,
                "ejected": ejected,
                "recent_failures": envoys_t.recent_failures(callers, cluster),
                "fault": None if fault is None else describe_fault(fault),
            }
        return out

    def status(self) -> dict[str, Any]:
        xds = self.ads.status()
        services = {}
        for name, workload in self.index.workloads.items():
            replicas = self.replicas.get(name, [])
            services[name] = {
                "desired": workload.spec.replicas,
                "ready": sum(1 for r in replicas if r.state is State.READY),
                "injected": workload.injected,
                "policy": self.index.policy_for(workload),
                "mtls": self.index.mtls_mode(workload).value if workload.injected else "DISABLED (not injected)",
                "replicas": [r.status() | {"xds": xds.get(r.proxy.node_id) if r.proxy else None} for r in replicas],
            }
        out: dict[str, Any] = {"services": services, "xds": {"port": self.xds_port, "nodes": len(xds)}}
        if self.ingress is not None:
            out["ingress"] = {
                "url": f"http://{self.settings.host}:{self.ingress_port}",
                "admin": self.ingress.admin_port,
                "pid": self.ingress.child.pid,
                "xds": xds.get(self.ingress.proxy.node_id),
            }
        out["boundary"] = self.boundary.summary()
        out["autoscaling"] = self.autoscaler.status()
        return out
