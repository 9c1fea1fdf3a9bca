"""Route-level resilience for calls to a service: retries, timeouts, sticky hashing, faults.

Each call to a service becomes two routes: idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE)
retried on the TrafficPolicy's `retryOn`, and every other method retried only when the request
cannot have reached the app (connect failure, refused stream, reset before the request was
sent). Retries prefer another replica (previous-hosts predicate) and back off exponentially.
Cluster-level resilience (outlier detection, connection pool, budget, load balancing) lives in
`clusters`.

Streams (gRPC, a WebSocket upgrade, server-sent events) get routes of their own, ahead of
those: no total timeout, which would cut a long stream, but the idle timeout (TrafficPolicy
`idleTimeout`, default `STREAM_IDLE_TIMEOUT`); gRPC calls keep the deadline their client sent
(`grpc-timeout`). Their retries are the safe ones, plus the gRPC codes the policy lists.
"""

from __future__ import annotations

from datetime import timedelta

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from interstate.compile import limits, names
from interstate.compile.common import duration, pack
from interstate.model.index import MeshIndex
from interstate.model.traffic_policy import (
    DEFAULT_RETRY_ON,
    GRPC_RETRY_ON,
    IDEMPOTENT_METHODS,
    SAFE_RETRY_ON,
    Backoff,
    Fault,
    FaultAt,
    HashOn,
    LbPolicy,
    Retries,
    TrafficPolicySpec,
)

FAULT_FILTER = "envoy.filters.http.fault"
RETRIABLE_HEADERS = "retriable-headers"
# Set by a side-car on the replies it makes itself when its own app failed them (see
# `replica_mappers`): the app was not reached (connect failure, overflow: safe to retry any
# method), or it dropped the connection before answering (safe for idempotent methods only).
# Callers retry those on another replica, and remove the headers.
UNREACHABLE, RESET = "replica-unreachable", "replica-reset"
MARKERS = {
    UNREACHABLE: ("x-interstate-unreachable", ("UF", "UO", "UH")),
    RESET: ("x-interstate-app-reset", ("UC", "UR")),
}
MARKER_HEADERS = [header for header, _ in MARKERS.values()]
DEFAULT_TIMEOUT = timedelta(seconds=15)
STREAM_IDLE_TIMEOUT = timedelta(minutes=5)  # Envoy's own default for a stream's idle time
# How a request says it is a stream: (route name suffix, header matcher).
GRPC_REQUEST = rc.HeaderMatcher(name="content-type", string_match=string_pb2.StringMatcher(prefix="application/grpc"))
STREAMS = (
    ("grpc", GRPC_REQUEST),
    ("upgrade", rc.HeaderMatcher(name="upgrade", present_match=True)),
    ("events", rc.HeaderMatcher(name="accept", string_match=string_pb2.StringMatcher(contains="text/event-stream"))),
)
# Without a TrafficPolicy: two retries, bounded by the 15 s route timeout. (Built without the
# user-facing rule that a `retries` section must name its own bound.)
DEFAULT_RETRIES = Retries.model_construct(
    attempts=2,
    per_try_timeout=None,
    retry_on=list(DEFAULT_RETRY_ON),
    backoff=Backoff(),
    budget=None,
)
_NONE = duration(0)  # a timeout of 0: none
_STREAM_IDLE = duration(STREAM_IDLE_TIMEOUT)
_NO_BUFFER = pack(limits.no_buffer())
_IDEMPOTENT = rc.HeaderMatcher(
    name=":method",
    string_match=string_pb2.StringMatcher(
        safe_regex=regex_pb2.RegexMatcher(regex=f"^({'|'.join(IDEMPOTENT_METHODS)})$")
    ),
)


def routes_to(index: MeshIndex, service: str, match: rc.RouteMatch, name: str) -> list[rc.Route]:
    """The routes that send requests matching `match` to `service`, idempotent ones first.
    Built once per index for all the service's callers (`MeshIndex.derived`); callers copy them
    into their own route configurations and must not change them."""
    key = ("routes_to", service, match.SerializeToString(deterministic=True), name)
    known = index.derived.get(key)
    if known is None:
        known = index.derived[key] = _routes_to(index, service, match, name)
    return list(known)


def _routes_to(index: MeshIndex, service: str, match: rc.RouteMatch, name: str) -> list[rc.Route]:
    idempotent_match = rc.RouteMatch()
    idempotent_match.CopyFrom(match)
    idempotent_match.headers.append(_IDEMPOTENT)
    policy = index.policy_spec(service)
    retries = policy.retries if policy and policy.retries else DEFAULT_RETRIES
    out = []
    split = index.traffic_splits.get(service)
    if split is not None and split.spec.pin is not None:
        # the sticky canary: requests with the pin header go to one backend, whatever the weights
        pinned = rc.RouteMatch()
        pinned.CopyFrom(match)
        pinned.headers.append(
            rc.HeaderMatcher(
                name=split.spec.pin.header.name,
                string_match=string_pb2.StringMatcher(exact=split.spec.pin.header.value),
            )
        )
        pin_action = action(index, service, retries, list(SAFE_RETRY_ON))
        pin_action.ClearField("weighted_clusters")
        pin_action.cluster = names.outbound_cluster(split.spec.pin.backend)
        out.append(rc.Route(name=f"{name}|pinned", match=pinned, route=pin_action))
    # three actions, each built once (routes copy them): a push compiles this for every caller
    # of every service
    http_retry_on = [c for c in retries.retry_on if c not in GRPC_RETRY_ON]
    grpc_retry_on = [*SAFE_RETRY_ON, *(c for c in retries.retry_on if c in GRPC_RETRY_ON)]
    idle = policy.idle_timeout if policy else None
    safe = action(index, service, retries, list(SAFE_RETRY_ON))
    grpc = action(index, service, retries, grpc_retry_on)
    stream(grpc, idle)
    safe_stream = rc.RouteAction()
    safe_stream.CopyFrom(safe)
    stream(safe_stream, idle)
    for kind, header in STREAMS:
        stream_match = rc.RouteMatch()
        stream_match.CopyFrom(match)
        stream_match.headers.append(header)
        route = rc.Route(name=f"{name}|{kind}", match=stream_match, route=grpc if kind == "grpc" else safe_stream)
        # a stream's body is not held until it ends (the ingress's body limit): it flows
        route.typed_per_filter_config[limits.BUFFER_FILTER].CopyFrom(_NO_BUFFER)
        out.append(_with_fault(route, policy))
    for suffix, route_match, route_action in (
        ("idempotent", idempotent_match, action(index, service, retries, http_retry_on)),
        ("other", match, safe),
    ):
        out.append(_with_fault(rc.Route(name=f"{name}|{suffix}", match=route_match, route=route_action), policy))
    return out


def _with_fault(route: rc.Route, policy: TrafficPolicySpec | None) -> rc.Route:
    """`route` with the policy's fault `at: CALLERS`, when there is one."""
    if policy is not None and policy.fault is not None and policy.fault.at is FaultAt.CALLERS:
        route.typed_per_filter_config[FAULT_FILTER].CopyFrom(pack(fault(policy.fault)))
    return route


def stream(out: rc.RouteAction, idle: timedelta | None) -> None:
    """A stream's route: no total timeout, the idle timeout instead. A gRPC call's deadline is
    its client's: `grpc-timeout` goes through to the app, and the client ends the call when it
    passes (Envoy passes the cancel on). Envoy does not enforce it too (`max_stream_duration`
    from `grpc-timeout`): it would race the client's own timer and, once messages flow, could
    only reset the stream, which the client reads as INTERNAL instead of DEADLINE_EXCEEDED."""
    out.timeout.CopyFrom(_NONE)
    out.idle_timeout.CopyFrom(duration(idle) if idle else _STREAM_IDLE)
    if out.HasField("retry_policy"):
        out.retry_policy.ClearField("per_try_timeout")  # it would cut the stream like a total timeout


def action(index: MeshIndex, service: str, retries: Retries, retry_on: list[str]) -> rc.RouteAction:
    policy = index.policy_spec(service)
    timeout = policy.timeout if policy and policy.timeout else DEFAULT_TIMEOUT
    out = rc.RouteAction(timeout=duration(timeout))
    idle = limits.route_idle_timeout(timeout)
    if idle is not None:
        out.idle_timeout.CopyFrom(duration(idle))
    backends = index.backends(service)
    if len(backends) == 1:
        out.cluster = names.outbound_cluster(backends[0][0])
    else:  # a TrafficSplit: Envoy picks a backend per request by weight
        out.weighted_clusters.clusters.extend(
            rc.WeightedCluster.ClusterWeight(name=names.outbound_cluster(b), weight={"value": w})
            for b, w in backends
            if w > 0
        )
        sticky = index.traffic_splits[service].spec.sticky_by
        if sticky is not None:  # ... by a hash of the session's header or cookie, not at random
            out.weighted_clusters.use_hash_policy.value = True
            out.hash_policy.append(hash_policy(sticky))
    if retries.attempts > 0:
        envoy_on = [c for c in retry_on if c not in MARKERS]
        if len(envoy_on) < len(retry_on):
            envoy_on.append(RETRIABLE_HEADERS)
        retry = rc.RetryPolicy(
            retry_on=",".join(envoy_on),
            num_retries={"value": retries.attempts},
            retry_back_off=rc.RetryPolicy.RetryBackOff(
                base_interval=duration(retries.backoff.base_interval),
                max_interval=duration(retries.backoff.max_interval),
            ),
            retry_host_predicate=[
                rc.RetryPolicy.RetryHostPredicate(
                    name="envoy.retry_host_predicates.previous_hosts",
                    typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
                )
            ],
            host_selection_retry_max_attempts=3,
        )
        retry.retriable_headers.extend(
            rc.HeaderMatcher(name=MARKERS[c][0], present_match=True) for c in retry_on if c in MARKERS
        )
        if retries.per_try_timeout is not None:
            retry.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
        out.retry_policy.CopyFrom(retry)
    balancer = policy.load_balancer if policy else None
    if balancer is not None and balancer.policy is LbPolicy.RING_HASH and balancer.hash_on is not None:
        out.hash_policy.append(hash_policy(balancer.hash_on))
    return out


def hash_policy(on: HashOn) -> rc.RouteAction.HashPolicy:
    if on.header is not None:
        return rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name=on.header))
    assert on.cookie is not None
    return rc.RouteAction.HashPolicy(
        cookie=rc.RouteAction.HashPolicy.Cookie(name=on.cookie.name, ttl=duration(on.cookie.ttl))
    )


def _percent(value: int) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(numerator=value, denominator=percent_pb2.FractionalPercent.HUNDRED)


def fault(spec: Fault) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if spec.abort is not None:
        out.abort.http_status = spec.abort.status
        out.abort.percentage.CopyFrom(_percent(spec.abort.percent))
    if spec.delay is not None:
        out.delay.fixed_delay.CopyFrom(duration(spec.delay.fixed_delay))
        out.delay.percentage.CopyFrom(_percent(spec.delay.percent))
    return out


def service_fault(index: MeshIndex, service: str, route: rc.Route) -> None:
    """A fault `at: SERVICE` is applied by the service's own side-cars, on their inbound route."""
    policy = index.policy_spec(service)
    if policy is not None and policy.fault is not None and policy.fault.at is FaultAt.SERVICE:
        route.typed_per_filter_config[FAULT_FILTER].CopyFrom(pack(fault(policy.fault)))


def replica_mappers() -> list[hcm_pb2.ResponseMapper]:
    """For a side-car's inbound listener: mark the replies it makes because its app could not be
    reached, or dropped the connection, so callers know whether the app saw the request."""
    return [
        hcm_pb2.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=flags)),
            headers_to_add=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=header, value="1"),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
        )
        for header, flags in MARKERS.values()
    ]


def fault_filter() -> hcm_pb2.HttpFilter:
    """The (empty) fault filter every outbound and ingress connection manager carries, so
    turning a rehearsal on or off changes routes only, never listeners."""
    return hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault_pb2.HTTPFault()))
