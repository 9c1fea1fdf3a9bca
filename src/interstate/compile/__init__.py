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
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from interstate.compile import clusters, endpoints, listeners, routes, tls
from interstate.compile.proxy import Credentials, Proxy, Role
from interstate.model.index import MeshIndex


@dataclass(frozen=True)
class ProxyResources:
    clusters: tuple[cluster_pb2.Cluster, ...]
    endpoints: tuple[endpoint_pb2.ClusterLoadAssignment, ...]
    listeners: tuple[listener_pb2.Listener, ...]
    routes: tuple[route_pb2.RouteConfiguration, ...]
    secrets: tuple[secret_pb2.Secret, ...] = ()


def compile_proxy(index: MeshIndex, proxy: Proxy, credentials: Credentials | None = None) -> ProxyResources:
    """All Envoy resources of one proxy. With `credentials`, traffic between proxies is mutual
    TLS and the proxy's certificate and trust bundle are part of its resources (SDS)."""
    return ProxyResources(
        clusters=tuple(clusters.build(index, proxy, credentials)),
        endpoints=tuple(endpoints.build(index, proxy)),
        listeners=tuple(listeners.build(index, proxy, credentials)),
        routes=tuple(routes.build(index, proxy)),
        secrets=tuple(tls.build_secrets(credentials)),
    )


__all__ = ["Credentials", "Proxy", "ProxyResources", "Role", "compile_proxy"]
