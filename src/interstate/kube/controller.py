"""The control plane's view of a cluster: watch -> translate -> compile -> snapshot cache.

`Controller` runs one `kube.watch.Watcher` per resource type (pods, EndpointSlices, every
mesh.codifyhq.io kind), and after a burst of changes (debounced, 50 ms by default) turns the
stores into a `MeshIndex` with `kube.cluster` and compiles a snapshot per injected pod's side-car
with the same `xds.incremental.SnapshotBuilder` and `xds.cache.SnapshotCache` standalone mode
uses; the `xds.server.AdsServer` serving that cache is the caller's.

- Nothing is pushed before every collection has been listed once: a half-read cluster would
  look like a mesh without workloads or endpoints.
- Custom resources are validated together, like a folder of mesh files: when any is invalid,
  every issue is logged (naming `namespace/name`, kind and field), `rejected` holds them, and the
  last good config stays in force (endpoints and pods still update under it). Fixing the object
  (or deleting it) makes the next push take the new config.
- A snapshot that fails its consistency check is logged and not pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from interstate.compile.proxy import Credentials, Proxy
from interstate.errors import ConfigError, Issue, SnapshotError
from interstate.kube import cluster, crds
from interstate.kube.bootstrap import ProxyPorts
from interstate.kube.watch import ApiSettings, ResourceType, Watcher
from interstate.model.index import MeshConfig, MeshIndex
from interstate.xds.cache import SnapshotCache
from interstate.xds.incremental import SnapshotBuilder

log = logging.getLogger(__name__)

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


def _no_credentials(proxy: Proxy) -> Credentials | None:
    return None


class Controller:
    def __init__(
        self,
        settings: ControllerSettings,
        cache: SnapshotCache,
        credentials: Callable[[Proxy], Credentials | None] = _no_credentials,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.credentials = credentials
        self.builder = SnapshotBuilder()
        self.config: MeshConfig | None = None  # the last good config
        self.rejected: list[Issue] = []  # why the cluster's current CRs are not in force ([] = they are)
        self.pushes = 0  # completed pushes (tests wait on it)
        self._mesh_types = mesh_resource_types()
        self._config_dirty = True
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._watchers: dict[ResourceType, Watcher] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._client = self.settings.api.client()
        for resource in (PODS, ENDPOINT_SLICES, *self._mesh_types):
            watcher = Watcher(self._client, resource, self._changed, self.settings.api)
            self._watchers[resource] = watcher
            self._tasks.append(asyncio.create_task(watcher.run(), name=f"watch {resource.plural}"))
        self._tasks.append(asyncio.create_task(self._loop(), name="kube controller"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- changes ---------------------------------------------------------------------------
    def _changed(self, resource: ResourceType) -> None:
        if resource in self._mesh_types:
            self._config_dirty = True
        self._wake.set()

    async def _loop(self) -> None:
        await asyncio.gather(*(w.synced.wait() for w in self._watchers.values()))
        log.info("cluster listed: %s", ", ".join(f"{len(w.store)} {r.plural}" for r, w in self._watchers.items()))
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.settings.debounce_s)
            self._wake.clear()
            self.push()

    def _objects(self, resource: ResourceType) -> list[dict[str, object]]:
        return self._watchers[resource].objects()

    def _update_config(self) -> None:
        objects = [obj for resource in self._mesh_types for obj in self._objects(resource)]
        try:
            config = cluster.mesh_config(objects)
        except ConfigError as exc:
            self.rejected = exc.issues
            for issue in exc.issues:
                log.error("invalid mesh resource, the last good config stays: %s", issue)
            return
        self.rejected = []
        if config != self.config:  # keep the same object otherwise: the builder reuses its work
            self.config = config
            log.info("mesh config from the cluster: %d resources", len(config.resources))

    def push(self) -> None:
        """Snapshots for every injected pod's side-car from the stores; set the changed ones."""
        if self._config_dirty:
            self._config_dirty = False
            self._update_config()
        config = self.config
        if config is None:
            log.warning("no valid mesh config from the cluster yet; nothing pushed")
            return
        ports = self.settings.ports
        index = MeshIndex(config, cluster.endpoints(self._objects(ENDPOINT_SLICES), config, ports))
        proxies = cluster.proxies(self._objects(PODS), config, ports)
        try:
            snapshots = self.builder.build(index, proxies, self.credentials)
        except SnapshotError as exc:
            log.error("snapshot refused, nothing pushed: %s", exc)
            return
        self.builder.forget(snapshots)
        for node_id, snapshot in snapshots.items():
            self.cache.set(node_id, snapshot)
        for node_id in self.cache.nodes():
            if node_id not in snapshots:
                self.cache.remove(node_id)
        self.pushes += 1
