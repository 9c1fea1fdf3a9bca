"""The control-plane core: a mesh index and its proxies in, snapshots served over ADS out.

Mode-independent: standalone mode (`standalone.mesh`) and the Kubernetes controller
(`kube.controller`) both hand it a `MeshIndex` (config + endpoints) and the proxies to serve,
and it does the rest:
- compiles every proxy's snapshot (only what changed, `xds.incremental`) with its workload
  certificate from `identity` (SVIDs over SDS, rotated at half life: `rotation()` pushes when one
  falls due), sets them in the cache, drops snapshots of proxies that are gone;
- serves them with the ADS server (mutual TLS; a stream's node ID must be the one its client
  certificate proves, or what the mode's `authenticate` hook says);
- records NACKs in the audit trail, counts everything in one Prometheus registry, and answers
  "has every Envoy taken its new config?" (`settle`, `wait_acked`).
Called by the modes; calls xds, ca and the audit trail. Holds no opinion on how workloads run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from interstate import audit
from interstate.ca.authority import utcnow
from interstate.compile import Credentials, Proxy
from interstate.core.identity import IdentitySettings, MeshIdentity
from interstate.errors import PermanentError, Rejected
from interstate.model.index import MeshIndex
from interstate.xds.cache import SnapshotCache
from interstate.xds.incremental import SnapshotBuilder
from interstate.xds.server import AdsServer, Authenticator, XdsLimits

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 10.0  # how long a change waits for every Envoy to ACK or NACK
ROTATION_CHECK_MAX_S = 30.0


class ControlPlane:
    def __init__(self, identity: IdentitySettings, audit_path: Path, xds_limits: XdsLimits | None = None) -> None:
        self.identity_settings = identity
        self.audit = audit.AuditLog(audit_path)
        self.registry = CollectorRegistry()
        self.cache = SnapshotCache()
        self.ads = AdsServer(self.cache, self.registry, on_nack=self._record_nack, limits=xds_limits)
        self.builder = SnapshotBuilder()
        self.identity: MeshIdentity | None = None
        self.pushes = Counter("interstate_snapshot_updates", "proxy snapshots changed", registry=self.registry)
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str, port: int, trust_domain: str, authenticate: Authenticator | None = None) -> int:
        """Load (or create) the CA for `trust_domain` and serve ADS on host:port (0 = any free
        port) with mutual TLS, or server-side TLS plus `authenticate` (Kubernetes: tokens)."""
        self.identity = MeshIdentity(self.identity_settings, trust_domain)
        client_auth = authenticate is None  # mutual TLS: this run's bootstrap certificates
        check = authenticate or self.identity.proves_node
        self.port = await self.ads.start(host, port, self.identity.server_credentials(client_auth), check)
        return self.port

    async def stop(self) -> None:
        await self.ads.stop()

    def credentials(self, proxy: Proxy, now: datetime | None = None, index: MeshIndex | None = None) -> Credentials:
        """The proxy's workload certificate in force (issued on first use, again at half life),
        naming the identity `index` gives its workload."""
        if self.identity is None:
            raise PermanentError("the control plane has not started: no CA yet")
        return self.identity.credentials(proxy, now or utcnow(), index)

    def check_trust_domain(self, index: MeshIndex) -> None:
        """A running mesh's certificates name its trust domain: refuse a config that changes it."""
        if self.identity is not None and index.mesh.trust_domain != self.identity.trust_domain:
            raise PermanentError(
                f"Mesh spec.trustDomain cannot change from {self.identity.trust_domain!r} to "
                f"{index.mesh.trust_domain!r} while the mesh runs (every certificate names it); "
                "stop the mesh and start it again"
            )

    # ---- the push --------------------------------------------------------------------------
    def push(self, index: MeshIndex, proxies: Iterable[Proxy]) -> int:
        """Snapshots for every proxy from one index, only what changed recompiled; set the changed
        ones and drop those of proxies not listed. All or nothing: raises SnapshotError (nothing
        set) when a compiled proxy is inconsistent. Certificates past half their life are
        re-issued on the way (that is rotation). Returns how many snapshots changed."""
        self.check_trust_domain(index)
        now = utcnow()
        snapshots = self.builder.build(index, proxies, lambda p: self.credentials(p, now, index))
        assert self.identity is not None
        self.identity.certs.keep_only(set(snapshots))
        self.builder.forget(snapshots)
        changed = 0
        for node_id, snapshot in snapshots.items():
            if self.cache.set(node_id, snapshot):
                changed += 1
                self.pushes.inc()
        for node_id in self.cache.nodes():
            if node_id not in snapshots:
                self.cache.remove(node_id)
        return changed

    async def rotation(
        self,
        on_due: Callable[[], None],
        now: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Whenever a certificate reaches half its life: renew the bootstrap certificates due
        (on disk, where their Envoys reload them) and call `on_due` (which pushes); the push
        re-issues workload certificates due, and only their SDS resources change. Runs until
        cancelled. `now` and `sleep`: the clock (tests give a virtual one)."""
        while True:
            due = None if self.identity is None else self.identity.next_rotation()
            wait = 1.0 if due is None else (due - now()).total_seconds()
            await sleep(min(max(wait, 0.05), ROTATION_CHECK_MAX_S))
            if self.identity is not None and due is not None and now() >= due:
                try:
                    renewed = self.identity.renew_bootstraps(now())
                    if renewed:
                        log.info("renewed the bootstrap certificates of %d Envoys", len(renewed))
                    on_due()
                except Exception:  # rotation must go on whatever one push hit
                    log.exception("rotating certificates failed; trying again in 1s")
                if self.identity.next_rotation() == due:
                    await sleep(1.0)  # nothing was re-issued: do not spin

    # ---- has every Envoy taken it? ---------------------------------------------------------
    async def settle(self, node_ids: list[str], timeout: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until every connected Envoy answered its current snapshot; raise `Rejected` on any NACK."""
        nacks = await self.ads.wait_settled(node_ids, timeout)
        if nacks:
            raise Rejected(nacks, frozenset(n for n in nacks if not self.ads.kept_earlier(n)))

    async def wait_connected(self, node_ids: list[str], timeout: float) -> bool:
        """Wait (bounded) until every node in `node_ids` has an ADS stream open."""
        return await self.ads.wait_connected(node_ids, timeout)

    async def wait_acked(self, node_ids: list[str], type_url: str, timeout: float) -> bool:
        return await self.ads.wait_acked(node_ids, type_url, timeout)

    def _record_nack(self, node: str, type_short: str, version: str, message: str) -> None:
        """The ADS server's NACK callback: `node` refused its new `type_short` configuration."""
        detail = {"node": node, "type": type_short, "version": version, "message": message}
        outcome = f"refused: Envoy kept its previous {type_short} configuration"
        self.audit.record(f"envoy {node}", "xds.nack", node, detail, outcome)
