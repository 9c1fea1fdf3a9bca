"""Snapshots for every proxy, rebuilding only what a change touches.

The compiler is pure and cheap per proxy, but a push compiles every proxy, and most pushes in a
running mesh change only endpoints (a replica became ready, was withdrawn, restarted) — on
election night, the autoscaler makes many of those. `SnapshotBuilder` keeps, per proxy, the
config part of its last snapshot (clusters, listeners, routes, secrets: compiled, checked for
consistency and serialized) and reuses it while the mesh config (the same `MeshConfig` object),
the proxy and its credentials are unchanged. Endpoints are built per *service*, serialized once
and shared by every proxy that calls it, and a proxy's endpoint set is rebuilt only when one of
its callees' endpoints changed. The result is the same snapshot, byte for byte, as compiling the
proxy from scratch (tests/test_incremental.py holds it to that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from interstate.compile import Credentials, Proxy, compile_proxy, endpoints, names
from interstate.model.index import Endpoint, MeshConfig, MeshIndex
from interstate.xds import resources as rt
from interstate.xds.snapshot import Snapshot, TypeSet, any_bytes, static_types

EndpointsKey = tuple[tuple[str, tuple[Endpoint, ...]], ...]


@dataclass(frozen=True)
class _Compiled:
    proxy: Proxy
    credentials: Credentials | None
    static: Mapping[str, TypeSet]
    eds_services: tuple[str, ...]  # the callees whose endpoints come over EDS


class SnapshotBuilder:
    def __init__(self) -> None:
        self._config: MeshConfig | None = None
        self._compiled: dict[str, _Compiled] = {}
        self._assignments: dict[str, tuple[tuple[Endpoint, ...], bytes]] = {}
        self._eds: dict[str, tuple[EndpointsKey, TypeSet]] = {}
        self.compiled = 0  # proxies compiled in full by the last build (for tests and benches)

    def build(
        self, index: MeshIndex, proxies: Iterable[Proxy], credentials: Callable[[Proxy], Credentials | None]
    ) -> dict[str, Snapshot]:
        """A snapshot per proxy (by node ID). Raises SnapshotError (nothing cached changes) when
        a compiled proxy is inconsistent."""
        compiled: dict[str, _Compiled] = {}
        for proxy in proxies:
            creds = credentials(proxy)
            last = self._compiled.get(proxy.node_id) if index.config is self._config else None
            if last is None or last.proxy != proxy or last.credentials != creds:
                res = compile_proxy(index, proxy, creds)
                eds = tuple(e.cluster_name for e in res.endpoints)
                last = _Compiled(proxy, creds, static_types(res), _services(index, proxy, eds))
            compiled[proxy.node_id] = last
        # every proxy compiled: now nothing can fail, keep the new state
        self.compiled = sum(1 for node, c in compiled.items() if self._compiled.get(node) is not c)
        self._config = index.config
        self._compiled = compiled
        return {node: Snapshot.from_types(c.static, self._endpoints(index, node, c)) for node, c in compiled.items()}

    def _endpoints(self, index: MeshIndex, node: str, compiled: _Compiled) -> TypeSet:
        key = tuple((service, index.endpoints_of(service)) for service in compiled.eds_services)
        cached = self._eds.get(node)
        if cached is not None and cached[0] == key:
            return cached[1]
        packed = [(names.outbound_cluster(service), self._assignment(index, service, eps)) for service, eps in key]
        typeset = TypeSet.from_packed(rt.ENDPOINT, packed)
        self._eds[node] = (key, typeset)
        return typeset

    def _assignment(self, index: MeshIndex, service: str, eps: tuple[Endpoint, ...]) -> bytes:
        cached = self._assignments.get(service)
        if cached is None or cached[0] != eps:
            cached = (eps, any_bytes(rt.ENDPOINT, endpoints.assignment(index, service)))
            self._assignments[service] = cached
        return cached[1]

    def forget(self, keep: Iterable[str]) -> None:
        """Drop what is cached for proxies not in `keep` (node IDs)."""
        live = set(keep)
        self._compiled = {n: c for n, c in self._compiled.items() if n in live}
        self._eds = {n: e for n, e in self._eds.items() if n in live}


def _services(index: MeshIndex, proxy: Proxy, eds_names: tuple[str, ...]) -> tuple[str, ...]:
    """The services behind a proxy's EDS clusters, checked against what the compiler produced."""
    services = tuple(s for s in index.callees(proxy.caller) if s not in index.externals)
    assert tuple(names.outbound_cluster(s) for s in services) == eds_names, (services, eds_names)
    return services
