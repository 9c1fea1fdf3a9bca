"""Plain TCP services (`Workload.spec.protocol: tcp`): a database, a cache. Opaque bytes, mutual TLS.

- A caller's side-car listens on 127.0.0.1:<localPort> for each tcp service its workload lists
  in `spec.localPorts` (Consul's upstreams), and carries each connection to a replica of it
  (`outbound|<service>`, mutual TLS, the service's connection pool and outlier detection).
  Replicas of one caller share the port (SO_REUSEPORT, Envoy's default on Linux): their
  side-cars are interchangeable, and the kernel spreads connections among them.
- A tcp service's side-car: its inbound listener ends mutual TLS and hands the bytes to the
  app (no HTTP, so no policy header, retries or routes: access to it is still by identity).

A design open to Kubernetes' transparent capture later: there, the listener would take what
iptables redirects instead of a declared port; the cluster and the inbound side stay as they are.
Access-log directions are `outbound-tcp` and `inbound-tcp` (no status code; flags say what failed).
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from interstate.compile import access_log, names
from interstate.compile.common import pack, socket_address
from interstate.compile.proxy import Proxy
from interstate.model.base import Protocol
from interstate.model.index import MeshIndex

TCP_PROXY = "envoy.filters.network.tcp_proxy"
OUTBOUND, INBOUND = "outbound-tcp", "inbound-tcp"
CONNECT_ATTEMPTS = 3  # a replica that refuses the connection: the next one is tried


def speaks_tcp(index: MeshIndex, service: str) -> bool:
    workload = index.workloads.get(service)
    return workload is not None and workload.spec.protocol is Protocol.TCP


def relay(index: MeshIndex, proxy: Proxy, direction: str, cluster: str) -> listener_components_pb2.Filter:
    """A TCP proxy filter to `cluster`, logging each connection like an HTTP call."""
    config = tcp_proxy_pb2.TcpProxy(
        stat_prefix=direction,
        cluster=cluster,
        access_log=[access_log.build(index, direction, proxy)],
        max_connect_attempts={"value": CONNECT_ATTEMPTS},
    )
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(config))


def local_ports(index: MeshIndex, proxy: Proxy) -> list[listener_pb2.Listener]:
    """The caller's side: one listener per tcp service on the port its workload gave it."""
    workload = index.workloads.get(proxy.service)
    if workload is None:
        return []
    out = []
    for service, port in sorted(workload.spec.local_ports.items()):
        chain = listener_components_pb2.FilterChain(
            filters=[relay(index, proxy, OUTBOUND, names.outbound_cluster(service))]
        )
        out.append(
            listener_pb2.Listener(
                name=names.local_port_listener(service),
                address=socket_address("127.0.0.1", port),
                filter_chains=[chain],
                enable_reuse_port={"value": True},  # the caller's other replicas listen here too
            )
        )
    return out
