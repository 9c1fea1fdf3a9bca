"""Kubernetes mode's source: a cluster's objects in, the control-plane core fed with them.

`Controller` runs one `kube.watch.Watcher` per resource type (pods, EndpointSlices, every
mesh.codifyhq.io kind), and after a burst of changes (debounced, 50 ms by default) turns the
stores into a `MeshIndex` and the injected pods' side-car `Proxy`s with `kube.cluster`, and hands
them to `core.plane.ControlPlane.push`, exactly as standalone mode does: each side-car gets its
X.509-SVID over SDS (rotated at half life: `ControlPlane.rotation` wakes the loop) and every hop
between side-cars is mutual TLS.

- The core's ADS server is started by the controller, once the first valid mesh config with a
  `Mesh` resource is known: the CA and every certificate name the trust domain of that
  resource, which is not known before (and cannot change while side-cars hold certificates). Side-cars that start earlier retry (Envoy backs off) and are served then. ADS
  is TLS with the server certificate only; each stream is authenticated by
  `kube.tokenreview.TokenReviewer` (the pod's service-account token, checked by the API server).
  A port that cannot be bound is logged and retried.
- A workload's identity goes only to its own service account (`kube.cluster.PodClaim`): a pod
  whose service account or namespace is not its Workload's gets no Proxy, so no configuration
  and no certificate (logged once), and `_bind` serves a stream only when the token's namespace
  and service account are the ones entitled to the workload its pod is labelled as: otherwise
  PERMISSION_DENIED before anything is sent, logged and counted
  (`interstate_xds_identity_refusals`). A node the controller has not matched to a pod yet, or
  has nothing for (no pod IP yet), is answered UNAVAILABLE: Envoy retries until it is served.
- A Mesh that changes `trustDomain` while serving is refused like an invalid CR (the running
  mesh's certificates name it): the last good config stays, `rejected` says why.
- Nothing is pushed before every collection has been listed once: a half-read cluster would
  look like a mesh without workloads or endpoints. A collection the API server does not serve
  (404: its CRD is not installed) counts as listed and empty, and is watched once it appears;
  one it refuses (RBAC: 403) holds the push back, and `problems()` and the log name it, the
  verb and the account, until it can be read (fail closed: a mesh read without its
  AccessPolicies would be less strict than the one declared).
- Custom resources are validated together, like a folder of mesh files: when any is invalid,
  every issue is logged (naming `namespace/name`, kind and field), `rejected` holds them, and the
  last good config stays in force (endpoints and pods still update under it). Fixing the object
  (or deleting it) makes the next push take the new config.
- A snapshot that fails its consistency check is logged and not pushed.
- **Several replicas.** Each serves xDS from the same cluster state; the one holding the Lease
  of `ControllerSettings.lease` (`kube.lease`) writes the custom resources' status. A replica
  that takes the Lease over writes what changed meanwhile.
- **Status** (`status()`, `resilience()`) is the core's (`core.observe`), fed with what the
  cluster says: each labelled pod is a replica (ready when its Ready condition is), its
  side-car's xDS sync from the ADS server, and what callers saw read from each injected pod's
  metrics port (`/stats/prometheus` on its ready port), as of the last push.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import Counter

from interstate.ca import spiffe
from interstate.ca.authority import utcnow
from interstate.core import observe
from interstate.core.plane import ControlPlane
from interstate.core.status import ControlPlaneInfo, MeshStatus, Resilience, XdsSummary
from interstate.errors import ConfigError, InterstateError, Issue, PermanentError, TemporaryError
from interstate.kube import accept, ca_secret, cluster, crds
from interstate.kube.bootstrap import ProxyPorts
from interstate.kube.lease import LeaseElector, LeaseSettings
from interstate.kube.tokenreview import PodIdentity, ReviewSettings, TokenReviewer
from interstate.kube.watch import ApiSettings, ResourceType, Watcher
from interstate.model.index import MeshConfig, MeshIndex
from interstate.model.mesh import Mesh
from interstate.telemetry import envoys

log = logging.getLogger(__name__)

MAX_AUDITED_REFUSALS = 1024
PODS = ResourceType("v1", "Pod", "pods")
ENDPOINT_SLICES = ResourceType("discovery.k8s.io/v1", "EndpointSlice", "endpointslices")


def mesh_resource_types() -> list[ResourceType]:
    """Every mesh.codifyhq.io kind, across all namespaces (`Mesh` is cluster-scoped)."""
    return [ResourceType(cls.API_VERSION, cls.KIND, crds.plural_of(cls.KIND)) for cls in crds.mesh_kinds()]


@dataclass(frozen=True)
class ControllerSettings:
    api: ApiSettings
    ports: ProxyPorts = field(default_factory=ProxyPorts)  # the injected side-car's ports
    debounce_s: float = 0.05  # a burst of events within this is one push
    xds_host: str = "0.0.0.0"  # the ADS listener (in a pod: every address; side-cars dial its Service)
    xds_port: int = 15012  # what `InjectSettings.xds_address` points at; 0 = any free port
    review: ReviewSettings = field(default_factory=ReviewSettings)  # how side-cars' tokens are checked
    retry_s: float = 1.0  # after the ADS port could not be bound, try again this much later (doubling)
    max_retry_s: float = 30.0
    # Several replicas: the one holding this Lease writes the custom resources' status (None: a
    # single controller, which always does). `identity` names this replica in the Lease.
    lease: LeaseSettings | None = None
    # Only these namespaces' pods, EndpointSlices and namespaced mesh resources (the Mesh itself is
    # cluster-scoped); empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    # (namespace, name) of the Secret holding the mesh CA, shared by every replica (`kube.ca_secret`);
    # None: the CA of the core's own folder (a single controller, development).
    ca_secret: tuple[str, str] | None = None
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


class Controller:
    """Feeds `core` from the cluster and runs its ADS server (see the module docstring)."""

    def __init__(self, settings: ControllerSettings, core: ControlPlane) -> None:
        self.settings = settings
        self.core = core
        self.reviewer = TokenReviewer(settings.api, settings.review, bind=self._bind)
        self.claims: dict[str, cluster.PodClaim] = {}  # node ID -> its pod's claim, as of the last push
        self._audited_refusals: dict[str, str] = {}  # node ID -> the refusal last written to the audit trail
        self.identity_refusals = Counter(
            "interstate_xds_identity_refusals",
            "ADS streams refused: the token's service account may not have the workload identity the pod claims",
            registry=core.registry,
        )
        self.config: MeshConfig | None = None  # the last good config
        self.rejected: list[Issue] = []  # why the cluster's current CRs are not in force ([] = they are)
        self.pushes = 0  # completed pushes (tests wait on it)
        self.index: MeshIndex | None = None  # what the last push compiled from
        self._pods: list[dict[str, object]] = []  # the pods of the last push
        self._since = ""
        self._awaiting_mesh = False  # no Mesh resource yet (logged once)
        self._last_good: dict[accept.Key, dict[str, Any]] = {}  # each mesh resource's last version in force
        self._outcome: accept.Accepted | None = None  # what the last look at the mesh resources found
        self._elector: LeaseElector | None = None
        self._http: httpx.AsyncClient | None = None  # reads side-cars' metrics for status
        self.serving = asyncio.Event()  # set once the core's ADS server listens (`core.port`)
        self._mesh_types = [c for base in mesh_resource_types() for c in self._collections(base)]
        self._config_dirty = True
        self._wake = asyncio.Event()
        self._retry_s = settings.retry_s
        self._client: httpx.AsyncClient | None = None
        self._watchers: dict[ResourceType, Watcher] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._unentitled: dict[str, str] = {}  # node ID -> why its pod gets nothing (logged once)

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        """Whether this replica does what must happen once (writing status): it holds the Lease,
        or there is no Lease to hold (a single controller)."""
        return self._elector is None or self._elector.leading

    async def start(self) -> None:
        self._client = self.settings.api.client()
        if self.settings.lease is not None:
            self._elector = LeaseElector(
                self._client, self.settings.lease, self.settings.identity, lambda leading: self._wake.set()
            )
            self._tasks.append(asyncio.create_task(self._elector.run(), name="lease"))
        self._http = httpx.AsyncClient(trust_env=False)
        self._since = utcnow().isoformat()
        for resource in (*self._collections(PODS), *self._collections(ENDPOINT_SLICES), *self._mesh_types):
            watcher = Watcher(self._client, resource, self._changed, self.settings.api)
            self._watchers[resource] = watcher
            self._tasks.append(asyncio.create_task(watcher.run(), name=f"watch {resource.plural}"))
        self._tasks.append(asyncio.create_task(self._loop(), name="kube controller"))

    async def stop(self, release: bool = True) -> None:
        """Stop watching and serving; hand the Lease back unless `release` is False (tests use
        that to stop as a killed replica would)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._elector is not None and release:
            await self._elector.release()
        await self.core.stop()
        self.serving.clear()
        await self.reviewer.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ---- changes ---------------------------------------------------------------------------
    def _changed(self, resource: ResourceType) -> None:
        if resource in self._mesh_types:
            self._config_dirty = True
        self._wake.set()

    def collections(self) -> list[str]:
        """The REST paths this controller lists and watches."""
        return [r.path for r in self._watchers]

    def problems(self) -> dict[str, str]:
        """{collection: why it cannot be read now}: not listed yet (RBAC, the API server down) or
        not served (its CRD is not installed, read as no objects). Empty when all is read."""
        out = {r.path: w.problem for r, w in self._watchers.items() if w.problem is not None}
        if self._awaiting_mesh and not self.serving.is_set():
            out["mesh"] = "no Mesh resource yet: its spec.trustDomain names the CA and every certificate"
        return out

    async def _loop(self) -> None:
        listed = False
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.settings.debounce_s)
            self._wake.clear()
            unread = [r.path for r, w in self._watchers.items() if not w.synced.is_set()]
            if unread:  # a half-read cluster would look like a mesh without workloads or endpoints
                continue
            if not listed:
                listed = True
                log.info(
                    "cluster listed: %s", ", ".join(f"{len(w.store)} {r.plural}" for r, w in self._watchers.items())
                )
            if self.serving.is_set() or await self._serve():
                self.push()
            await self._write_statuses()

    async def _serve(self) -> bool:
        """Start the core's ADS server once a valid config names the trust domain; True when it
        serves. A failure to listen is logged and retried (with back-off) by waking the loop."""
        self._refresh_config()
        if self.config is None:
            log.warning("no valid mesh config from the cluster yet; the xDS server waits for one")
            return False
        if not self.config.of_kind(Mesh):
            if not self._awaiting_mesh:
                log.warning(
                    "no Mesh resource in the cluster yet: its trust domain names the CA and every certificate; "
                    "the xDS server waits for one"
                )
            self._awaiting_mesh = True
            return False
        trust_domain = MeshIndex(self.config).mesh.trust_domain
        settings = self.settings
        try:
            if settings.ca_secret is not None and self._client is not None:
                namespace, name = settings.ca_secret
                identity = self.core.identity_settings
                self.core.identity_settings = await ca_secret.load_or_create(
                    self._client, namespace, name, trust_domain, identity.certs_dir / "ca-secret", identity, utcnow()
                )
            port = await self.core.start(settings.xds_host, settings.xds_port, trust_domain, self.reviewer)
        except (OSError, RuntimeError, InterstateError, httpx.HTTPError) as exc:  # a port in use, no CA yet
            log.error(
                "cannot serve xDS on %s:%d (%s); retrying in %.1fs",
                settings.xds_host,
                settings.xds_port,
                exc,
                self._retry_s,
            )
            asyncio.get_running_loop().call_later(self._retry_s, self._wake.set)
            self._retry_s = min(self._retry_s * 2, settings.max_retry_s)
            return False
        log.info("xDS (ADS) serving on %s:%d for trust domain %s", settings.xds_host, port, trust_domain)
        self.serving.set()
        self._tasks.append(asyncio.create_task(self.core.rotation(self._wake.set), name="certificate rotation"))
        return True

    def _collections(self, base: ResourceType) -> list[ResourceType]:
        """The collections watched for `base`: one per namespace of `settings.namespaces` for a
        namespaced kind, else all namespaces at once."""
        if not self.settings.namespaces or base.kind in crds.CLUSTER_SCOPED:
            return [base]
        return [dataclasses.replace(base, namespace=ns) for ns in self.settings.namespaces]

    def _objects(self, resource: ResourceType) -> list[dict[str, Any]]:
        """The objects of `resource`'s kind, from each collection watched for it."""
        return [
            obj
            for watched, watcher in self._watchers.items()
            if (watched.api_version, watched.plural) == (resource.api_version, resource.plural)
            for obj in watcher.objects()
        ]

    def _refresh_config(self) -> None:
        if self._config_dirty:
            self._config_dirty = False
            self._update_config()

    def _update_config(self) -> None:
        """The mesh resources in force (`kube.accept`): every valid one, the last good version of
        one made invalid, none of one never valid nor of what depends on it. Their statuses are
        due to be written."""
        objects = [obj for resource in mesh_resource_types() for obj in self._objects(resource)]
        outcome = accept.accept(objects, self._last_good)
        issues = [i for found in outcome.refused.values() for i in found] + outcome.unplaced
        try:
            if outcome.config is None:
                raise ConfigError(issues)
            self._check_trust_domain(outcome.config, objects)
        except ConfigError as exc:
            self.rejected = exc.issues
            for issue in exc.issues:
                log.error("invalid mesh resource, the last good config stays: %s", issue)
            self._outcome = accept.Accepted(None, {k: list(exc.issues) for k in map(accept.key_of, objects)})
            return
        self.rejected = issues
        for issue in issues:
            log.error("invalid mesh resource, held back (with what depends on it): %s", issue)
        self._outcome = outcome
        self._last_good = {key: obj for obj in objects if (key := accept.key_of(obj)) not in outcome.refused} | {
            key: self._last_good[key] for key in outcome.kept
        }
        config = outcome.config
        if config != self.config:  # keep the same object otherwise: the builder reuses its work
            self.config = config
            log.info("mesh config from the cluster: %d resources", len(config.resources))

    async def _write_statuses(self) -> None:
        """Each mesh resource's `status` (`Accepted`, or not with why), through its status
        subresource, where it differs from what the object carries. Failures are logged and
        tried again at the next change."""
        if self._client is None or self._outcome is None or not self.leading:
            return
        now = utcnow().replace(microsecond=0).isoformat().replace("+00:00", "Z")
        for resource in mesh_resource_types():
            for obj in self._objects(resource):
                key = accept.key_of(obj)
                status = accept.status_of(obj, self._outcome.refused.get(key, []), key in self._outcome.kept, now)
                if accept.unchanged(obj, status):
                    continue
                metadata = obj.get("metadata") or {}
                scope = f"/namespaces/{metadata['namespace']}" if metadata.get("namespace") else ""
                root = "/api/v1" if resource.api_version == "v1" else f"/apis/{resource.api_version}"
                path = f"{root}{scope}/{resource.plural}/{metadata.get('name')}/status"
                try:
                    response = await self._client.patch(
                        path, json={"status": status}, headers={"content-type": "application/merge-patch+json"}
                    )
                except httpx.HTTPError as exc:
                    log.warning("cannot write the status of %s %s: %s", key[1], key[0], exc)
                    continue
                if response.status_code >= 400:
                    log.warning(
                        "cannot write the status of %s %s: %d %s",
                        key[1],
                        key[0],
                        response.status_code,
                        response.text[:300],
                    )

    def _check_trust_domain(self, config: MeshConfig, objects: list[dict[str, object]]) -> None:
        """ConfigError naming the Mesh object when `config` would change the running trust domain."""
        try:
            self.core.check_trust_domain(MeshIndex(config))
        except PermanentError as exc:
            meshes = [obj for obj in objects if obj.get("kind") == Mesh.KIND]
            name = cluster.object_name(meshes[0]) if meshes else "(no Mesh resource: the default trust domain)"
            resource = f"Mesh {name}" if meshes else ""
            raise ConfigError([Issue(name, 1 if meshes else 0, resource, "spec.trustDomain", str(exc))]) from None

    def push(self) -> None:
        """Every injected pod's side-car and the mesh from the stores, into the core (which sets
        the snapshots that changed, with their certificates, and drops those of pods gone)."""
        self._refresh_config()
        config = self.config
        if config is None or not self.serving.is_set():
            log.warning("no valid mesh config from the cluster yet; nothing pushed")
            return
        ports = self.settings.ports
        index = MeshIndex(config, cluster.endpoints(self._objects(ENDPOINT_SLICES), config, ports))
        pods = self._objects(PODS)
        proxies = cluster.proxies(pods, config, ports)
        claims = cluster.claims(pods, config)
        try:
            changed = self.core.push(index, proxies)
        except PermanentError as exc:  # SnapshotError: a compiled proxy is inconsistent
            log.error("push refused, nothing changed: %s", exc)
            return
        self.claims = claims
        self.index, self._pods = index, pods
        self._log_unentitled()
        log.debug("push: %d side-cars, %d snapshots changed", len(proxies), changed)
        self.pushes += 1

    # ---- status ----------------------------------------------------------------------------
    def status(self) -> MeshStatus:
        """The mesh as of the last push: per service its pods as replicas, with their side-cars'
        xDS sync (`core.observe.services`); empty before the first push."""
        xds = self.core.ads.status()
        services = {}
        if self.index is not None:
            services = observe.services(self.index, cluster.replicas(self._pods, xds, self.settings.ports))
        return MeshStatus(
            services, XdsSummary(self.core.port, len(xds)), ControlPlaneInfo(os.getpid(), since=self._since)
        )

    async def resilience(self) -> dict[str, Resilience]:
        """Per service, what its callers' side-cars saw, read from their pods' metrics ports."""
        index, http = self.index, self._http
        if index is None or http is None:
            return {}
        pods = {cluster.node_id(pod): pod for pod in self._pods}
        callers = [
            observe.Caller(proxy, envoys.Caller(proxy.node_id, url))
            for proxy in cluster.proxies(self._pods, index.config, self.settings.ports)
            if (url := cluster.metrics_url(pods[proxy.node_id], self.settings.ports)) is not None
        ]
        replica_at = cluster.replica_names(self._pods, self.settings.ports)
        return await observe.resilience(http, index, callers, replica_at)

    # ---- who may have which identity -------------------------------------------------------
    def _bind(self, node_id: str, pod: PodIdentity) -> str | None:
        """The reviewer's binding (`kube.tokenreview.Binding`): serve `node_id`, whose token proves
        `pod`, only when that namespace and service account are entitled to the workload identity
        its pod claims, and once the node has something to be served (see the module docstring)."""
        claim = self.claims.get(node_id)
        if claim is None or self.core.identity is None:
            raise TemporaryError(f"node {node_id!r} is not known yet: no injected pod of that name has been seen")
        if pod.uid and claim.uid and pod.uid != claim.uid:
            self.identity_refusals.inc()
            refusal = (
                f"node {node_id!r}: the token is bound to pod uid {pod.uid}, but pod {pod.pod!r} now is uid "
                f"{claim.uid} (a token of an earlier pod of that name)"
            )
            log.error("refused a side-car: %s", refusal)
            return refusal
        if claim.entitled != (pod.namespace, pod.service_account):
            trust_domain = self.core.identity.trust_domain
            owner = f"service {claim.service!r}, which has no Workload, so nobody may have its identity"
            if claim.entitled is not None:
                namespace, account = claim.entitled
                expected = spiffe.workload_id(trust_domain, account, namespace)
                owner = (
                    f"workload {claim.service!r}, whose identity only service account {account!r} in namespace "
                    f"{namespace!r} ({expected}) may have"
                )
            refusal = (
                f"node {node_id!r} claims {owner}; its token is service account {pod.service_account!r} "
                f"in namespace {pod.namespace!r} ({pod.spiffe_id(trust_domain)})"
            )
            self.identity_refusals.inc()
            log.error("refused a side-car a workload identity its token does not prove: %s", refusal)
            if self._audited_refusals.get(node_id) != refusal:  # once per node and reason: Envoy retries
                if len(self._audited_refusals) >= MAX_AUDITED_REFUSALS:
                    self._audited_refusals.clear()
                self._audited_refusals[node_id] = refusal
                self.core.audit.record(
                    f"{pod.namespace}/{pod.service_account}",
                    "xds.identity.refused",
                    node_id,
                    {"reason": refusal},
                    "refused",
                )
            return refusal
        if self.core.cache.get(node_id) is None:
            raise TemporaryError(f"node {node_id!r} has no configuration yet (its pod has no IP yet, or has finished)")
        return None

    def _log_unentitled(self) -> None:
        """Log, once per pod and reason, each injected pod that gets nothing because its service
        account may not have the identity of the workload it is labelled as."""
        refused = {node: claim.refusal for node, claim in self.claims.items() if claim.refusal is not None}
        for node, why in refused.items():
            if self._unentitled.get(node) != why:
                log.error("side-car %s gets no configuration and no certificate: %s", node, why)
        self._unentitled = refused
