"""The compiler: pure functions from (mesh index, proxy) to Envoy v3 resources.

One module per Envoy type (listeners, routes, clusters, endpoints); `compile_proxy` gathers
them. No I/O, no clocks, no asyncio, no environment: the same inputs give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from interstate.compile import clusters, endpoints, listeners, routes
from interstate.compile.proxy import Proxy, Role
from interstate.model.index import MeshIndex


@dataclass(frozen=True)
class ProxyResources:
    clusters: tuple[cluster_pb2.Cluster, ...]
    endpoints: tuple[endpoint_pb2.ClusterLoadAssignment, ...]
    listeners: tuple[listener_pb2.Listener, ...]
    routes: tuple[route_pb2.RouteConfiguration, ...]


def compile_proxy(index: MeshIndex, proxy: Proxy) -> ProxyResources:
    return ProxyResources(
        clusters=tuple(clusters.build(index, proxy)),
        endpoints=tuple(endpoints.build(index, proxy)),
        listeners=tuple(listeners.build(index, proxy)),
        routes=tuple(routes.build(index, proxy)),
    )


__all__ = ["Proxy", "ProxyResources", "Role", "compile_proxy"]
