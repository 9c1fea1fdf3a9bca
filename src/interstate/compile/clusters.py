"""CDS: the clusters one proxy needs — one per service it may call, plus its own app.

A caller's cluster for a service carries that service's TrafficPolicy. Outlier detection is
compiled for fast fail: `max_ejection_percent` defaults to 100 and the panic threshold is 0, so
once every replica is ejected Envoy answers 503 at once (flag UH) instead of trying them anyway.

Protocols: to another proxy, the Mesh's `hopProtocol` (HTTP/2 by default, with extended CONNECT
for WebSockets); to an app (the side-car's own, or a workload without a side-car), what the
workload says it speaks (`spec.protocol`): HTTP/1.1, or h2c. An HTTP/1.1 app's gRPC requests go
to a second cluster for the same port over h2c (gRPC is HTTP/2 only). ExternalServices: HTTP/1.1.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from interstate.compile import egress, names, passthrough, tls
from interstate.compile.common import ads, duration, pack, socket_address
from interstate.compile.proxy import Credentials, Proxy, Role
from interstate.model.base import HopProtocol, Protocol
from interstate.model.index import MeshIndex
from interstate.model.traffic_policy import ConnectionPool, LbPolicy, OutlierDetection, RetryBudget

CONNECT_TIMEOUT_S = 1.0


def build(index: MeshIndex, proxy: Proxy, credentials: Credentials | None = None) -> list[cluster_pb2.Cluster]:
    secure = credentials is not None
    clusters = [outbound(index, service, secure, proxy.host_addresses) for service in callees(index, proxy)]
    if proxy.role is Role.SIDECAR:
        workload = index.workloads.get(proxy.service)
        speaks = workload.spec.protocol if workload is not None else Protocol.HTTP
        clusters.append(local_app(proxy, names.inbound_cluster(proxy.service), speaks.h2c))
        if speaks is Protocol.HTTP:
            clusters.append(local_app(proxy, names.inbound_h2_cluster(proxy.service), http2=True))
        clusters.append(tunnel())
        if passthrough.allowed(index):
            clusters.append(passthrough.cluster(proxy.host_addresses))
    return clusters


def called(index: MeshIndex, proxy: Proxy) -> list[str]:
    """Services this proxy's clients may address (Host names, Gateway routes), sorted."""
    return index.called(proxy.caller)


def callees(index: MeshIndex, proxy: Proxy) -> list[str]:
    """Services this proxy sends requests to: those called, or their TrafficSplit backends."""
    return index.callees(proxy.caller)


def outbound(
    index: MeshIndex, service: str, secure: bool = False, host_addresses: tuple[str, ...] = ()
) -> cluster_pb2.Cluster:
    """How callers reach `service`: EDS endpoints, its TrafficPolicy, and mutual TLS when this
    proxy has credentials and `service` runs with a side-car; an ExternalService refuses the
    host's own addresses (`egress.guard`, with the proxy's `host_addresses`)."""
    cluster = cluster_pb2.Cluster(
        name=names.outbound_cluster(service),
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration(CONNECT_TIMEOUT_S),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads()),
    )
    workload = index.workloads.get(service)
    external = index.externals.get(service)
    spec = index.policy_spec(service)
    pool = spec.connection_pool if spec else None
    per_connection = pool.max_requests_per_connection if pool else None
    if external is not None:
        outside(cluster, external.spec.address, external.spec.port, external.spec.tls)
        http2 = False
    elif workload is not None and workload.spec.protocol is Protocol.TCP:  # bytes (`tcp`)
        http2 = False
        if secure and workload.injected:
            cluster.transport_socket.CopyFrom(tls.upstream(index, service))
    elif workload is not None and workload.injected:  # another proxy
        http2 = index.mesh.hop_protocol is HopProtocol.HTTP2
        if secure:
            cluster.transport_socket.CopyFrom(tls.upstream(index, service, "h2" if http2 else ""))
    else:  # an app without a side-car
        http2 = workload is not None and workload.spec.protocol.h2c
    options = protocol_options(http2, per_connection, websocket=http2 and external is None)
    if external is not None and not external.spec.allow_loopback:  # not to the host's own addresses
        if options is None:
            options = http_options_pb2.HttpProtocolOptions()
            options.explicit_http_config.http_protocol_options.SetInParent()
        options = egress.guard(options, host_addresses)
    if options is not None:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    cluster.circuit_breakers.thresholds.append(
        circuit_breakers(spec.connection_pool if spec else None, spec.retries.budget if spec and spec.retries else None)
    )
    if spec is None:
        return cluster
    if spec.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(outlier_detection(spec.outlier_detection))
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=0))
        # Apply an ejection (and any endpoint change) at once: Envoy's default 1 s merge window
        # would keep calls going to a just-ejected replica right after the replicas changed.
        cluster.common_lb_config.update_merge_window.CopyFrom(duration(0))
    if spec.load_balancer is not None:
        cluster.lb_policy = _LB_POLICIES[spec.load_balancer.policy]
    return cluster


def protocol_options(
    http2: bool, max_requests_per_connection: int | None = None, websocket: bool = False
) -> http_options_pb2.HttpProtocolOptions | None:
    """How a cluster speaks HTTP: HTTP/2 (with extended CONNECT when `websocket`, so an HTTP/1.1
    upgrade crosses as RFC 8441 CONNECT), or HTTP/1.1 (Envoy's default: None unless a limit is
    set)."""
    common = protocol_pb2.HttpProtocolOptions()
    if max_requests_per_connection is not None:
        common.max_requests_per_connection.value = max_requests_per_connection
    if not http2 and max_requests_per_connection is None:
        return None
    explicit = http_options_pb2.HttpProtocolOptions.ExplicitHttpConfig()
    if http2:
        explicit.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions(allow_connect=websocket))
    else:
        explicit.http_protocol_options.CopyFrom(protocol_pb2.Http1ProtocolOptions())
    return http_options_pb2.HttpProtocolOptions(common_http_protocol_options=common, explicit_http_config=explicit)


def outside(cluster: cluster_pb2.Cluster, address: str, port: int, originate_tls: bool) -> None:
    """An ExternalService's cluster: its address resolved by DNS (or taken as an IP), plain HTTP
    or TLS verified against the system's CA bundle, with SNI set to the address."""
    cluster.ClearField("eds_cluster_config")
    is_ip = all(c.isdigit() or c == "." for c in address) or ":" in address
    cluster.type = cluster_pb2.Cluster.STATIC if is_ip else cluster_pb2.Cluster.STRICT_DNS
    cluster.load_assignment.CopyFrom(one_endpoint(cluster.name, socket_address(address, port)))
    if originate_tls:
        cluster.transport_socket.CopyFrom(tls.to_outside(address))


HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_LB_POLICIES = {
    LbPolicy.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    LbPolicy.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    LbPolicy.RING_HASH: cluster_pb2.Cluster.RING_HASH,
}


# Without a budget, concurrent retries are limited only by each request's own attempts: Envoy's
# default (3 retries in flight per cluster) would refuse retries under any real concurrency.
UNBUDGETED_MAX_RETRIES = 100_000


def circuit_breakers(
    pool: ConnectionPool | None, budget: RetryBudget | None
) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    """Connection-pool limits (over them: an immediate 503, flag UO) and the retry budget."""
    out = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    if budget is None:
        out.max_retries.value = UNBUDGETED_MAX_RETRIES
    if pool is not None:
        for field in ("max_connections", "max_pending_requests", "max_requests"):
            value = getattr(pool, field)
            if value is not None:
                getattr(out, field).value = value
    if budget is not None:
        out.retry_budget.budget_percent.value = float(budget.percent)
        out.retry_budget.min_retry_concurrency.value = budget.min_concurrency
    return out


def outlier_detection(spec: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    out = outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=spec.consecutive_errors),
        interval=duration(spec.interval),
        base_ejection_time=duration(spec.base_ejection_time),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=spec.max_ejection_percent),
        enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=100),
        # Only the 5xx (and gateway) rules eject; success-rate ejection needs volume a small
        # mesh lacks.
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
    )
    if spec.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = spec.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.value = 100
    return out


def one_endpoint(cluster: str, address: address_pb2.Address) -> endpoint_pb2.ClusterLoadAssignment:
    """A static cluster's only endpoint."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))
                ]
            )
        ],
    )


def static(name: str, address: address_pb2.Address) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(CONNECT_TIMEOUT_S),
        load_assignment=one_endpoint(name, address),
    )


def tunnel() -> cluster_pb2.Cluster:
    """From the outbound listener, which ended an app's CONNECT, to the internal listener that
    routes what comes through it (`listeners.tunnel`)."""
    internal = address_pb2.Address(
        envoy_internal_address=address_pb2.EnvoyInternalAddress(server_listener_name=names.TUNNEL_LISTENER)
    )
    return static(names.TUNNEL_CLUSTER, internal)


def local_app(proxy: Proxy, name: str, http2: bool = False) -> cluster_pb2.Cluster:
    """The side-car's own app on 127.0.0.1, over HTTP/1.1 or h2c."""
    out = static(name, socket_address("127.0.0.1", proxy.app_port))
    options = protocol_options(http2)
    if options is not None:
        out.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    return out
