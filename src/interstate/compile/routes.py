"""RDS: how a proxy picks a cluster for a request, and the policy header it guarantees.

- side-car outbound: one virtual host per service the workload calls, matched on the Host
  header (`stats`, `stats:8080`), so apps keep calling `http://stats:8080/...` through their
  HTTP proxy; a `CONNECT stats:8080` tunnel is ended and what comes through it routed the
  same way (`tunnel`). Anything else gets a 404 that says why, or is passed through
  (`passthrough`). A tcp service has no virtual host: callers reach it on a local port (`tcp`).
- side-car inbound: everything to the local app (its gRPC calls over h2c), with no timeout of
  its own: the caller's is the call's deadline.
- ingress: the Gateway's path prefixes, longest first.
Streams (gRPC, WebSocket, server-sent events) get routes of their own (`resilience.STREAMS`).

Every request leaving a side-car or the ingress carries the mesh's policy header: when the
app did not set it, the workload's `mesh.codifyhq.io/policy` (else the mesh default) is added
with ADD_IF_ABSENT — a native Envoy header option, cheaper than Lua.
"""

from __future__ import annotations

from datetime import timedelta

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from interstate.compile import boundary, clusters, names, passthrough, policy_context, resilience, tcp
from interstate.compile.proxy import Proxy, Role
from interstate.model.base import Protocol
from interstate.model.index import MeshIndex


def build(index: MeshIndex, proxy: Proxy) -> list[route_pb2.RouteConfiguration]:
    if proxy.role is Role.INGRESS:
        return [ingress(index)]
    if tcp.speaks_tcp(index, proxy.service):  # its inbound side relays bytes: no routes
        return [outbound(index, proxy)]
    return [outbound(index, proxy), inbound(index, proxy)]


def policy_header(index: MeshIndex, policy: str | None) -> list[base_pb2.HeaderValueOption]:
    if not policy:
        return []
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=index.mesh.policy_header, value=policy),
            append_action=base_pb2.HeaderValueOption.ADD_IF_ABSENT,
        )
    ]


def not_found(message: str, name: str = "not-found") -> rc.Route:
    return rc.Route(
        name=name,
        match=rc.RouteMatch(prefix="/"),
        direct_response=rc.DirectResponseAction(status=404, body={"inline_string": f"interstate: {message}\n"}),
    )


def prefix_match(prefix: str) -> rc.RouteMatch:
    """`/results` matches `/results` and `/results/...` but not `/resultsx`."""
    if prefix.endswith("/"):
        return rc.RouteMatch(prefix=prefix)
    return rc.RouteMatch(path_separated_prefix=prefix)


def host_names(index: MeshIndex, service: str) -> list[str]:
    """The names an app may call `service` by: its own, and in a cluster (a Workload with a
    namespace) the Service's DNS names too: `stats.elections`, `stats.elections.svc` and
    `stats.elections.svc.cluster.local`."""
    workload = index.workloads.get(service)
    namespace = workload.metadata.namespace if workload is not None else None
    if namespace is None:
        return [service]
    stem = f"{service}.{namespace}"
    return [service, stem, f"{stem}.svc", f"{stem}.svc.cluster.local"]


def outbound(index: MeshIndex, proxy: Proxy) -> route_pb2.RouteConfiguration:
    workload = index.workloads.get(proxy.service)
    headers = policy_header(index, index.policy_for(workload))
    vhosts = []
    for service in clusters.called(index, proxy):
        if tcp.speaks_tcp(index, service):  # reached on its local port (`tcp`), not by Host
            continue
        external = index.externals.get(service)
        port = external.spec.port if external is not None else index.workloads[service].spec.port
        routes = [] if external is not None else [tunnel(index, service)]
        vhost = rc.VirtualHost(
            name=service,
            domains=[d for host in host_names(index, service) for d in (host, f"{host}:{port}")],
            routes=routes + resilience.routes_to(index, service, rc.RouteMatch(prefix="/"), service),
            request_headers_to_add=headers,
            response_headers_to_remove=resilience.MARKER_HEADERS,  # once retries were decided
        )
        if external is not None:
            boundary.enable_on(index, vhost)  # leaving the mesh: only allowed headers go out
        vhosts.append(vhost)
    declared = ", ".join(clusters.called(index, proxy)) or "none"
    refused = f"{proxy.service} may only call the services in its spec.calls ({declared})"
    other = rc.VirtualHost(name="undeclared", domains=["*"])
    if passthrough.allowed(index):
        other.routes.append(passthrough.route())
        other.request_headers_to_add.extend(headers)
        boundary.enable_on(index, other)
    else:
        other.routes.append(not_found(refused, passthrough.REFUSED_ROUTE))
    vhosts.append(other)
    return route_pb2.RouteConfiguration(name=names.OUTBOUND_ROUTE, virtual_hosts=vhosts)


def tunnel(index: MeshIndex, service: str) -> rc.Route:
    """`CONNECT service:port` (how grpcio and WebSocket clients use `HTTP_PROXY`): ended here,
    and what the app sends through it goes to the internal listener that routes it like any
    call (`listeners.tunnel`). The tunnel lives while calls in it move; idle, it is cut no
    sooner than the streams it may carry."""
    policy = index.policy_spec(service)
    idle = max(resilience.STREAM_IDLE_TIMEOUT, policy.idle_timeout if policy and policy.idle_timeout else timedelta(0))
    action = rc.RouteAction(
        cluster=names.TUNNEL_CLUSTER,
        upgrade_configs=[
            rc.RouteAction.UpgradeConfig(
                upgrade_type="CONNECT", connect_config=rc.RouteAction.UpgradeConfig.ConnectConfig()
            )
        ],
    )
    resilience.stream(action, idle)
    return rc.Route(
        name=f"{service}|tunnel", match=rc.RouteMatch(connect_matcher=rc.RouteMatch.ConnectMatcher()), route=action
    )


def inbound(index: MeshIndex, proxy: Proxy) -> route_pb2.RouteConfiguration:
    """Everything to the local app. No timeout of its own: the caller's is the call's one
    deadline (a shorter one here would cut calls the caller allowed more time, and read as the
    app's answer); streams are cut when idle for the service's `idleTimeout`."""
    policy = index.policy_spec(proxy.service)
    idle = policy.idle_timeout if policy else None
    workload = index.workloads.get(proxy.service)
    routes = []
    if workload is None or workload.spec.protocol is Protocol.HTTP:  # its gRPC requests over h2c
        to_h2 = rc.RouteAction(cluster=names.inbound_h2_cluster(proxy.service))
        resilience.stream(to_h2, idle)
        grpc = rc.RouteMatch(prefix="/", headers=[resilience.GRPC_REQUEST])
        routes.append(rc.Route(name="app|grpc", match=grpc, route=to_h2))
    to_app = rc.RouteAction(cluster=names.inbound_cluster(proxy.service))
    resilience.stream(to_app, idle)
    routes.append(rc.Route(name="app", match=rc.RouteMatch(prefix="/"), route=to_app))
    for route in routes:
        resilience.service_fault(index, proxy.service, route)
    return route_pb2.RouteConfiguration(
        name=names.INBOUND_ROUTE, virtual_hosts=[rc.VirtualHost(name="app", domains=["*"], routes=routes)]
    )


def ingress(index: MeshIndex) -> route_pb2.RouteConfiguration:
    routes = []
    gateway = index.gateway
    if gateway is not None:
        ordered = sorted(gateway.spec.routes, key=lambda r: (-len(r.path_prefix), r.path_prefix))
        for route in ordered:
            to_service = resilience.routes_to(
                index, route.service, prefix_match(route.path_prefix), f"{route.path_prefix}->{route.service}"
            )
            routes += policy_context.guard(index, to_service) + to_service
    routes.append(not_found("no Gateway route matches this path"))
    return route_pb2.RouteConfiguration(
        name=names.INGRESS_ROUTE,
        virtual_hosts=[
            rc.VirtualHost(
                name="ingress",
                domains=["*"],
                routes=routes,
                request_headers_to_add=policy_header(index, index.mesh.default_policy),
                response_headers_to_remove=resilience.MARKER_HEADERS,
            )
        ],
    )
