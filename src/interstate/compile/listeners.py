"""LDS: the listeners of one proxy, each an HTTP connection manager that takes routes over RDS
(or, for plain TCP, a TCP proxy: `tcp`).

side-car: `inbound` (other proxies -> this replica's app), `outbound` (the app's HTTP proxy ->
other services), `outbound-tunnel` (internal: what an app sends through a CONNECT tunnel), and
a `tcp|<service>` listener per local port the workload gave a tcp service. ingress: `ingress`
(clients -> the Gateway's routes). Every connection manager relays WebSocket upgrades.
Paths are normalized and slashes merged before routing, so `//x` and `/a/../x` route as `/x`.
The ingress and the inbound listeners carry Envoy's limits against hostile HTTP (`limits`).
"""

from __future__ import annotations

from typing import TypeAlias

from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from interstate.compile import (
    access_log,
    authz,
    boundary,
    egress,
    jwt,
    limits,
    names,
    passthrough,
    policy_context,
    resilience,
    tcp,
    tls,
)
from interstate.compile.common import ads, pack, socket_address
from interstate.compile.proxy import Credentials, Proxy, Role
from interstate.model.base import MtlsMode
from interstate.model.index import MeshIndex

HCM: TypeAlias = hcm_pb2.HttpConnectionManager


def build(index: MeshIndex, proxy: Proxy, credentials: Credentials | None = None) -> list[listener_pb2.Listener]:
    if proxy.role is Role.INGRESS:
        manager = http_manager(index, names.INGRESS_LISTENER, names.INGRESS_ROUTE, proxy)
        limits.edge(manager)
        # An escaped slash (`%2F`, `%5C`) is answered with a redirect to the unescaped path
        # (307, nothing forwarded), so what routing and every policy decide on is the plain path.
        manager.path_with_escaped_slashes_action = HCM.UNESCAPE_AND_REDIRECT
        before_router(manager, present(boundary.filter_for(index, everywhere=True), resilience.fault_filter()))
        tokens = jwt.filters(index)
        if tokens:
            before_router(manager, tokens)
            manager.local_reply_config.CopyFrom(authz.local_reply("the gateway"))
            manager.local_reply_config.mappers.insert(0, jwt.failure_is_401())
        # right before the router: a request other filters refuse (token, role) is not read
        manager.http_filters.insert(len(manager.http_filters) - 1, limits.body_filter())
        out = listener(names.INGRESS_LISTENER, proxy.address, proxy.ingress_port, [chain(manager)])
        out.per_connection_buffer_limit_bytes.value = limits.CONNECTION_BUFFER_BYTES
        return [out]
    outbound_chain = chain(outbound(index, proxy))  # built once: the tunnel's is the same
    return [
        inbound(index, proxy, credentials),
        listener(names.OUTBOUND_LISTENER, "127.0.0.1", proxy.outbound_port, [outbound_chain]),
        tunnel(outbound_chain),
        *tcp.local_ports(index, proxy),
    ]


def outbound(index: MeshIndex, proxy: Proxy) -> HCM:
    """The app's HTTP proxy: calls into the mesh, by Host (or absolute URL) or CONNECT tunnel."""
    manager = http_manager(index, names.OUTBOUND_LISTENER, names.OUTBOUND_ROUTE, proxy)
    if passthrough.allowed(index) or index.externals:  # a guarded cluster may refuse a call
        manager.local_reply_config.mappers.append(egress.refused_reply())
    before_router(
        manager,
        present(
            boundary.filter_for(index, everywhere=False),
            passthrough.http_filter() if passthrough.allowed(index) else None,
            resilience.fault_filter(),
        ),
    )
    return manager


def tunnel(outbound_chain: listener_components_pb2.FilterChain) -> listener_pb2.Listener:
    """Where a CONNECT tunnel the outbound listener ended delivers what the app sends in it
    (grpcio, WebSocket clients and others tunnel through `HTTP_PROXY`): an internal listener
    (no socket) with the outbound listener's connection manager, so each call in the tunnel,
    HTTP/1.1 or h2c, is routed, retried, stamped with the policy header and counted like any
    other. Its stats and access-log direction are the outbound listener's."""
    out = listener_pb2.Listener(name=names.TUNNEL_LISTENER, filter_chains=[outbound_chain])
    out.internal_listener.SetInParent()
    return out


def inbound(index: MeshIndex, proxy: Proxy, credentials: Credentials | None) -> listener_pb2.Listener:
    """Other proxies -> this replica. With credentials: mutual TLS required (STRICT), or TLS and
    plaintext side by side (PERMISSIVE, told apart by the TLS inspector). A tcp service's
    side-car relays bytes to its app instead of HTTP calls (`tcp`)."""
    served: HCM | listener_components_pb2.Filter
    relays_bytes = tcp.speaks_tcp(index, proxy.service)
    if relays_bytes:
        served = tcp.relay(index, proxy, tcp.INBOUND, names.inbound_cluster(proxy.service))
    else:
        served = http_manager(index, names.INBOUND_LISTENER, names.INBOUND_ROUTE, proxy, inbound=True)
    if credentials is None:
        return listener(names.INBOUND_LISTENER, proxy.address, proxy.inbound_port, [chain(served)])
    secure = chain(served, tls.downstream(index.mesh.trust_domain))
    workload = index.workloads.get(proxy.service)
    if workload is None or index.mtls_mode(workload) is MtlsMode.STRICT:
        return listener(names.INBOUND_LISTENER, proxy.address, proxy.inbound_port, [secure])
    secure.filter_chain_match.transport_protocol = "tls"
    plain = served
    if not relays_bytes:
        plain = http_manager(index, names.INBOUND_LISTENER + "_plaintext", names.INBOUND_ROUTE, proxy, inbound=True)
    inspector = listener_components_pb2.ListenerFilter(
        name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector())
    )
    out = listener(names.INBOUND_LISTENER, proxy.address, proxy.inbound_port, [secure, chain(plain)])
    out.listener_filters.append(inspector)
    return out


def http_manager(index: MeshIndex, stat_prefix: str, route: str, proxy: Proxy, inbound: bool = False) -> HCM:
    manager = HCM(
        stat_prefix=stat_prefix,
        codec_type=HCM.AUTO,
        rds=hcm_pb2.Rds(config_source=ads(), route_config_name=route),
        # no x-envoy-* request headers added by the router: none of our proxies reads them, and
        # after the boundary allow-list they would leak Envoy internals to an ExternalService
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=pack(router_pb2.Router(suppress_envoy_headers=True))
            )
        ],
        access_log=[access_log.build(index, stat_prefix, proxy)],
        normalize_path={"value": True},
        merge_slashes=True,
        path_with_escaped_slashes_action=HCM.UNESCAPE_AND_REDIRECT,
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(allow_absolute_url={"value": True}),
        generate_request_id={"value": True},
        # WebSocket (and any HTTP/1.1 upgrade a route lets through): relayed, not refused 403
        upgrade_configs=[HCM.UpgradeConfig(upgrade_type="websocket")],
    )
    # `x_policy_ctx` must not slip past rules written for `x-policy-ctx`: such names are refused.
    manager.common_http_protocol_options.headers_with_underscores_action = (
        protocol_pb2.HttpProtocolOptions.REJECT_REQUEST
    )
    if inbound:
        limits.inbound(manager)
        # a caller's side-car sends a WebSocket over HTTP/2 as extended CONNECT (RFC 8441)
        manager.http2_protocol_options.allow_connect = True
        # The app learns who called it (URI= the caller's SPIFFE ID); a caller cannot forge it.
        manager.forward_client_cert_details = HCM.SANITIZE_SET
        manager.set_current_client_cert_details.uri = True
        # Authorization decides on the decoded path: `/a%2Fb` is `/a/b`, not a way around it.
        manager.path_with_escaped_slashes_action = HCM.UNESCAPE_AND_FORWARD
        checks = (
            authz.svid_filter(),
            policy_context.required_filter(index, proxy.service),
            authz.access_filter(index, proxy.service),
        )
        # then a rehearsal's fault `at: SERVICE` (only routes change when it is turned on or off)
        before_router(manager, present(*checks, resilience.fault_filter()))
        manager.local_reply_config.CopyFrom(authz.local_reply(proxy.service))
        manager.local_reply_config.mappers.extend(resilience.replica_mappers())
    return manager


def before_router(manager: HCM, filters: list[hcm_pb2.HttpFilter]) -> None:
    """Put `filters` in front of the router (always last), in the given order."""
    router = list(manager.http_filters)
    del manager.http_filters[:]
    manager.http_filters.extend([*filters, *router])


def present(*filters: hcm_pb2.HttpFilter | None) -> list[hcm_pb2.HttpFilter]:
    return [f for f in filters if f is not None]


def chain(
    served: HCM | listener_components_pb2.Filter, transport: base_pb2.TransportSocket | None = None
) -> listener_components_pb2.FilterChain:
    """A filter chain of one network filter: an HTTP connection manager, or the filter given."""
    if served.DESCRIPTOR.full_name == HCM.DESCRIPTOR.full_name:
        served = listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=pack(served)
        )
    out = listener_components_pb2.FilterChain(filters=[served])
    if transport is not None:
        out.transport_socket.CopyFrom(transport)
    return out


def listener(
    name: str, address: str, port: int, chains: list[listener_components_pb2.FilterChain]
) -> listener_pb2.Listener:
    """A listener that is its port's one owner: no SO_REUSEPORT (Envoy sets it by default), so
    another socket on the port, even another Envoy of the mesh, fails to bind instead of taking
    a share of its connections."""
    return listener_pb2.Listener(
        name=name, address=socket_address(address, port), filter_chains=chains, enable_reuse_port={"value": False}
    )
