"""The compiler, tested as calls: "a call from results to http://stats:8080/x goes to ...".

Each test compiles the election-night mesh (or a variation) for one proxy and follows a request
through the Envoy resources with `interstate.simulate`, instead of comparing proto shapes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_pb2
from helpers_xds import make_credentials

from interstate.compile import Proxy, ProxyResources, compile_proxy
from interstate.config.loader import decode_sources
from interstate.model.index import Endpoint, MeshIndex
from interstate.simulate import EjectionRule, Outcome, Retry, simulate
from interstate.xds import resources as rt
from interstate.xds.snapshot import Snapshot

MESH = """\
apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: {name: election-night}
spec: {defaultPolicy: FEC-F101}
"""
RESULTS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata:
  name: results
  annotations:
    mesh.codifyhq.io/inject: "enabled"
    mesh.codifyhq.io/policy: "FEC-F101"
spec:
  port: 8080
  replicas: 2
  run: {command: [python, apps/results.py]}
  calls: [stats]
"""
STATS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: stats}
spec:
  port: 8080
  run: {command: [python, apps/stats.py]}
"""
GATEWAY = """\
apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata: {name: public}
spec:
  routes:
    - {pathPrefix: /results, service: results}
"""
BREAKER = """\
apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: {name: stats-breaker}
spec:
  destination: {service: stats}
  outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 30s}
"""
ELECTION_NIGHT = [MESH, RESULTS, STATS, GATEWAY, BREAKER]

STATS_0 = Endpoint("stats", 0, "127.0.0.1", 15001)
RESULTS_0 = Endpoint("results", 0, "127.0.0.1", 15011)
APP_PORT = 18080
FEC = {"x-policy-ctx": "FEC-F101"}


def mesh(*docs: str, endpoints: dict[str, tuple[Endpoint, ...]] | None = None) -> MeshIndex:
    config = decode_sources({"mesh.yaml": "---\n".join(docs or ELECTION_NIGHT)})
    if endpoints is None:
        endpoints = {"stats": (STATS_0,), "results": (RESULTS_0,)}
    return MeshIndex(config, endpoints)


def sidecar(service: str, replica: int = 0) -> Proxy:
    base = 15000 + 10 * replica
    return Proxy.sidecar(service, replica, inbound_port=base + 1, outbound_port=base + 2, app_port=APP_PORT + replica)


def call(index: MeshIndex, source: str, url: str, **headers: str) -> Outcome:
    """A request the app `source` sends through its side-car's outbound listener."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return simulate(
        compile_proxy(index, sidecar(source)),
        "outbound",
        parts.netloc,
        path,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def from_outside(index: MeshIndex, path: str, **headers: str) -> Outcome:
    """A request from outside the mesh to the ingress."""
    return simulate(
        compile_proxy(index, Proxy.ingress(8000)),
        "ingress",
        "localhost:8000",
        path,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def without(text: str, line: str) -> str:
    assert line in text, line
    return text.replace(line, "")


# --- side-car outbound: calls between services ------------------------------------------------


def test_a_call_from_results_to_stats_reaches_stats_with_the_policy_header() -> None:
    outcome = call(mesh(), "results", "http://stats:8080/x")

    assert outcome.status is None, outcome.describe()
    assert outcome.cluster == "outbound|stats"
    assert outcome.endpoints == ("127.0.0.1:15001",)
    assert outcome.headers_added == FEC


@pytest.mark.parametrize("host", ["stats", "stats:8080", "STATS:8080", "Stats"])
def test_the_service_name_works_with_or_without_its_port_in_any_case(host: str) -> None:
    assert call(mesh(), "results", f"http://{host}/x").cluster == "outbound|stats"


def test_an_app_supplied_policy_header_is_kept() -> None:
    outcome = call(mesh(), "results", "http://stats:8080/x", X_Policy_Ctx="FEC-F999")

    assert outcome.cluster == "outbound|stats"
    assert outcome.headers_added == {}  # ADD_IF_ABSENT: the app's value travels unchanged


def test_a_workload_without_a_policy_annotation_gets_the_mesh_default() -> None:
    results = without(RESULTS, '    mesh.codifyhq.io/policy: "FEC-F101"\n')

    outcome = call(mesh(MESH, results, STATS), "results", "http://stats:8080/x")

    assert outcome.headers_added == FEC


def test_the_annotation_wins_over_the_mesh_default() -> None:
    results = RESULTS.replace('policy: "FEC-F101"', 'policy: "FEC-F202"')

    outcome = call(mesh(MESH, results, STATS), "results", "http://stats:8080/x")

    assert outcome.headers_added == {"x-policy-ctx": "FEC-F202"}


def test_without_default_or_annotation_no_header_is_added() -> None:
    results = without(RESULTS, '    mesh.codifyhq.io/policy: "FEC-F101"\n')

    outcome = call(mesh(results, STATS), "results", "http://stats:8080/x")

    assert outcome.cluster == "outbound|stats"
    assert outcome.headers_added == {}


def test_the_mesh_can_rename_the_policy_header() -> None:
    renamed = MESH.replace("FEC-F101}", "P1, policyHeader: x-gov-policy}")
    results = without(RESULTS, '    mesh.codifyhq.io/policy: "FEC-F101"\n')

    outcome = call(mesh(renamed, results, STATS), "results", "http://stats:8080/x")

    assert outcome.headers_added == {"x-gov-policy": "P1"}


@pytest.mark.parametrize("url", ["http://audit:8080/x", "http://stats:9090/x", "http://127.0.0.9/"])
def test_a_call_to_an_undeclared_service_gets_a_404_naming_the_allowed_ones(url: str) -> None:
    outcome = call(mesh(), "results", url)

    assert outcome.status == 404
    assert outcome.cluster is None
    assert outcome.body == ("interstate: results may only call the services in its spec.calls (stats)\n")


def test_a_workload_that_calls_nothing_may_call_nothing() -> None:
    outcome = call(mesh(), "stats", "http://results:8080/")

    assert (outcome.status, outcome.body) == (
        404,
        "interstate: stats may only call the services in its spec.calls (none)\n",
    )


def test_by_default_only_idempotent_calls_are_retried_after_reaching_the_app() -> None:
    get = call(mesh(), "results", "http://stats:8080/x")
    post = simulate(compile_proxy(mesh(), sidecar("results")), "outbound", "stats:8080", "/x", method="POST")

    # retriable-headers: the callee's side-car marked its reply "my app was not reached"
    assert get.retry == Retry("connect-failure,refused-stream,reset,retriable-headers", 2)
    assert post.retry == Retry("connect-failure,refused-stream,reset-before-request,retriable-headers", 2)
    # ... which marks: any method when the app was not reached, GETs also when it dropped the call
    outbound = next(r for r in compile_proxy(mesh(), sidecar("results")).routes if r.name == "outbound")
    by_route = {
        r.name: [h.name for h in r.route.retry_policy.retriable_headers] for r in outbound.virtual_hosts[0].routes
    }
    assert by_route == {
        "stats|tunnel": [],  # a CONNECT tunnel: the calls in it are retried, not the tunnel
        "stats|grpc": ["x-interstate-unreachable"],
        "stats|upgrade": ["x-interstate-unreachable"],
        "stats|events": ["x-interstate-unreachable"],
        "stats|idempotent": ["x-interstate-unreachable", "x-interstate-app-reset"],
        "stats|other": ["x-interstate-unreachable"],
    }
    assert get.timeout == post.timeout == timedelta(seconds=15)


# --- outlier detection (circuit breaking) -----------------------------------------------------


def test_with_consecutive_errors_3_stats_is_ejected_after_3_5xx_for_30s_and_fails_fast() -> None:
    outcome = call(mesh(), "results", "http://stats:8080/x")

    assert outcome.ejection == EjectionRule(
        consecutive_5xx=3,
        base_ejection_time=timedelta(seconds=30),
        interval=timedelta(seconds=1),
        max_ejection_percent=100,
    )
    assert outcome.panic_threshold == 0  # when every replica is ejected: 503 at once


def test_the_traffic_policy_knobs_reach_envoy() -> None:
    breaker = BREAKER.replace(
        "{consecutiveErrors: 3, baseEjectionTime: 30s}",
        "{consecutiveErrors: 7, baseEjectionTime: 1m30s, interval: 250ms, maxEjectionPercent: 50}",
    )

    outcome = call(mesh(MESH, RESULTS, STATS, breaker), "results", "http://stats:8080/x")

    assert outcome.ejection == EjectionRule(7, timedelta(seconds=90), timedelta(milliseconds=250), 50)


@pytest.mark.parametrize(
    "docs",
    [
        (MESH, RESULTS, STATS),
        (
            MESH,
            RESULTS,
            STATS,
            BREAKER.replace("  outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 30s}\n", ""),
        ),
    ],
    ids=["no TrafficPolicy", "TrafficPolicy without outlierDetection"],
)
def test_without_outlier_detection_envoy_keeps_its_defaults(docs: tuple[str, ...]) -> None:
    outcome = call(mesh(*docs), "results", "http://stats:8080/x")

    assert outcome.cluster == "outbound|stats"
    assert outcome.ejection is None
    assert outcome.panic_threshold == 50  # Envoy's default


def test_a_traffic_policy_applies_to_every_caller_of_its_destination_only() -> None:
    breaker = BREAKER.replace("service: stats", "service: results")
    index = mesh(MESH, RESULTS, STATS, GATEWAY, breaker)

    assert call(index, "results", "http://stats:8080/").ejection is None
    to_results = from_outside(index, "/results")
    assert to_results.ejection is not None and to_results.ejection.consecutive_5xx == 3


# --- endpoints --------------------------------------------------------------------------------


def test_the_endpoints_of_stats_are_the_sidecar_addresses_in_the_index() -> None:
    replicas = (Endpoint("stats", 1, "127.0.0.1", 15021), Endpoint("stats", 0, "127.0.0.1", 15001))

    outcome = call(mesh(endpoints={"stats": replicas}), "results", "http://stats:8080/x")

    assert outcome.endpoints == ("127.0.0.1:15001", "127.0.0.1:15021")


def test_a_service_with_no_ready_replica_gets_503_no_healthy_upstream() -> None:
    outcome = call(mesh(endpoints={}), "results", "http://stats:8080/x")

    assert (outcome.cluster, outcome.status, outcome.flag) == ("outbound|stats", 503, "UH")
    assert outcome.body == "no healthy upstream"
    assert outcome.endpoints == ()


# --- side-car inbound -------------------------------------------------------------------------


def test_the_inbound_listener_forwards_to_the_app_on_loopback() -> None:
    resources = compile_proxy(mesh(), sidecar("stats", replica=1))

    outcome = simulate(resources, "inbound", "stats:8080", "/x", headers={})

    assert outcome.cluster == "inbound|stats"
    assert outcome.endpoints == (f"127.0.0.1:{APP_PORT + 1}",)
    assert outcome.headers_added == {}
    assert outcome.retry is None  # the app has seen the request: never replay it
    assert outcome.timeout is None  # the caller's timeout is the call's one deadline (issue 12)


# --- streams (issue 12): gRPC, WebSocket, server-sent events ------------------------------------

STREAMING = """\
apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: {name: stats-streams}
spec:
  destination: {service: stats}
  timeout: 30s
  idleTimeout: 2m
  retries: {attempts: 2, perTryTimeout: 1s, retryOn: [connect-failure, 5xx, unavailable, resource-exhausted]}
"""


def outbound_route(index: MeshIndex, name: str) -> rc.Route:
    config = next(r for r in compile_proxy(index, sidecar("results")).routes if r.name == "outbound")
    return next(r for vhost in config.virtual_hosts for r in vhost.routes if r.name == name)


@pytest.mark.parametrize(
    ("method", "headers", "route"),
    [
        ("POST", {"content-type": "application/grpc"}, "stats|grpc"),
        ("POST", {"content-type": "application/grpc+proto"}, "stats|grpc"),
        ("GET", {"upgrade": "websocket", "connection": "upgrade"}, "stats|upgrade"),
        ("GET", {"accept": "text/html, text/event-stream"}, "stats|events"),
    ],
)
def test_a_stream_has_no_total_timeout_only_an_idle_one(method: str, headers: dict[str, str], route: str) -> None:
    index = mesh(MESH, RESULTS, STATS, GATEWAY, STREAMING)
    outcome = simulate(compile_proxy(index, sidecar("results")), "outbound", "stats:8080", "/s", method, headers)

    assert (outcome.route, outcome.cluster, outcome.timeout) == (route, "outbound|stats", None)
    action = outbound_route(index, route).route
    assert action.idle_timeout.seconds == 120  # the policy's idleTimeout
    assert not action.retry_policy.HasField("per_try_timeout")  # it would cut the stream too
    plain = call(index, "results", "http://stats:8080/s")
    assert (plain.route, plain.timeout) == ("stats|idempotent", timedelta(seconds=30))


def test_grpc_calls_keep_their_deadline_and_retry_only_on_safe_codes() -> None:
    index = mesh(MESH, RESULTS, STATS, GATEWAY, STREAMING)
    grpc = outbound_route(index, "stats|grpc").route
    assert not grpc.HasField("max_stream_duration")  # the client's grpc-timeout is its deadline
    assert grpc.retry_policy.retry_on.split(",") == [
        "connect-failure",
        "refused-stream",
        "reset-before-request",
        "unavailable",
        "resource-exhausted",
        "retriable-headers",
    ]
    # gRPC codes mean nothing to an HTTP call; an HTTP call's 5xx means nothing to gRPC (200)
    assert "unavailable" not in outbound_route(index, "stats|idempotent").route.retry_policy.retry_on
    default = outbound_route(mesh(), "stats|grpc").route
    assert default.idle_timeout.seconds == 300 and "unavailable" not in default.retry_policy.retry_on


def test_the_app_proxy_listens_on_loopback_only() -> None:
    proxy = replace(sidecar("results"), address="127.0.0.2")

    listeners = {x.name: x.address.socket_address for x in compile_proxy(mesh(), proxy).listeners}

    assert (listeners["inbound"].address, listeners["inbound"].port_value) == ("127.0.0.2", 15001)
    assert (listeners["outbound"].address, listeners["outbound"].port_value) == ("127.0.0.1", 15002)


# --- ingress ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/results", "/results/", "/results/x", "/results?state=ca"])
def test_the_ingress_routes_results_paths_to_results(path: str) -> None:
    outcome = from_outside(mesh(), path)

    assert outcome.cluster == "outbound|results"
    assert outcome.endpoints == ("127.0.0.1:15011",)


@pytest.mark.parametrize("path", ["/resultsx", "/result", "/", "/stats", "/RESULTS"])
def test_the_ingress_answers_404_for_other_paths(path: str) -> None:
    outcome = from_outside(mesh(), path)

    assert outcome.status == 404
    assert outcome.body == "interstate: no Gateway route matches this path\n"


def test_the_longest_gateway_prefix_wins_whatever_its_position() -> None:
    gateway = GATEWAY + ("    - {pathPrefix: /results/live, service: stats}\n    - {pathPrefix: /, service: stats}\n")
    index = mesh(MESH, RESULTS, STATS, gateway)

    assert from_outside(index, "/results/live/ca").cluster == "outbound|stats"
    assert from_outside(index, "/results/lively").cluster == "outbound|results"
    assert from_outside(index, "/results").cluster == "outbound|results"
    assert from_outside(index, "/anything").cluster == "outbound|stats"


def test_the_ingress_adds_the_mesh_default_policy_only_when_absent() -> None:
    assert from_outside(mesh(), "/results").headers_added == FEC
    assert from_outside(mesh(), "/results", x_policy_ctx="FEC-F101").headers_added == {}  # a known ID is kept
    assert from_outside(mesh(RESULTS, STATS, GATEWAY), "/results").headers_added == {}


@pytest.mark.parametrize("sent", ["FEC-F7", "FEC-F101,FEC-F202", "FEC-F101" + "X" * 80])
def test_the_ingress_replaces_a_policy_id_it_does_not_know(sent: str) -> None:
    outcome = from_outside(mesh(), "/results", x_policy_ctx=sent)
    assert outcome.route.startswith("policy-replaced|")
    assert outcome.cluster == "outbound|results" and outcome.headers_added == FEC


def test_the_ingress_accepts_the_mesh_known_policies_and_rejects_others_when_told() -> None:
    strict = MESH.replace(
        "spec: {defaultPolicy: FEC-F101}",
        "spec: {defaultPolicy: FEC-F101, knownPolicies: [FEC-F202], unknownPolicy: REJECT}",
    )
    index = mesh(strict, RESULTS, STATS, GATEWAY)
    kept = from_outside(index, "/results", x_policy_ctx="FEC-F202")
    assert kept.cluster == "outbound|results" and kept.headers_added == {}
    refused = from_outside(index, "/results", x_policy_ctx="FEC-F7")
    assert refused.status == 400 and "must be one known policy ID (FEC-F101, FEC-F202)" in refused.body


def test_an_ingress_without_gateway_answers_404() -> None:
    outcome = from_outside(mesh(MESH, RESULTS, STATS), "/results")

    assert outcome.status == 404


@pytest.mark.parametrize(
    ("path", "cluster"),
    [
        ("//results//x", "outbound|results"),
        ("/x/../results", "outbound|results"),
        ("/./results/./x", "outbound|results"),
        ("/results/../stats", None),
        ("/results/..", None),
    ],
)
def test_the_ingress_normalizes_paths_and_merges_slashes_before_routing(path: str, cluster: str | None) -> None:
    assert from_outside(mesh(), path).cluster == cluster


@pytest.mark.parametrize("listener", ["inbound", "outbound"])
def test_sidecar_listeners_normalize_paths_too(listener: str) -> None:
    outcome = simulate(compile_proxy(mesh(), sidecar("results")), listener, "stats", "/a//b/../c")

    assert outcome.request.startswith(f"GET http://stats/a/c on {listener}")


# --- determinism and snapshots ----------------------------------------------------------------


def every_proxy(index: MeshIndex) -> list[Proxy]:
    proxies = [Proxy.ingress(8000)]
    for name, workload in sorted(index.workloads.items()):
        proxies += [sidecar(name, r) for r in range(workload.spec.replicas)]
    return proxies


def serialized(resources: ProxyResources) -> bytes:
    groups = (resources.clusters, resources.endpoints, resources.listeners, resources.routes)
    return b"".join(m.SerializeToString(deterministic=True) for group in groups for m in group)


def test_compiling_twice_gives_identical_bytes() -> None:
    for proxy in every_proxy(mesh()):
        assert serialized(compile_proxy(mesh(), proxy)) == serialized(compile_proxy(mesh(), proxy))


def test_the_order_of_calls_and_endpoints_does_not_change_the_output() -> None:
    audit = STATS.replace("name: stats", "name: audit")
    one = RESULTS.replace("calls: [stats]", "calls: [stats, audit]")
    other = RESULTS.replace("calls: [stats]", "calls: [audit, stats]")
    eps = [Endpoint("stats", 1, "127.0.0.1", 15021), STATS_0]

    a = mesh(MESH, one, STATS, audit, endpoints={"stats": tuple(eps)})
    b = mesh(MESH, other, STATS, audit, endpoints={"stats": tuple(reversed(eps))})

    assert serialized(compile_proxy(a, sidecar("results"))) == serialized(compile_proxy(b, sidecar("results")))


DIGEST_SCRIPT = """
import hashlib, sys
from interstate.compile import Proxy, compile_proxy
from interstate.config.loader import decode_sources
from interstate.model.index import Endpoint, MeshIndex
index = MeshIndex(decode_sources({"mesh.yaml": sys.stdin.read()}),
                  {"stats": (Endpoint("stats", 0, "127.0.0.1", 15001),)})
r = compile_proxy(index, Proxy.sidecar("results", 0, inbound_port=15001, outbound_port=15002,
                                      app_port=18080))
out = hashlib.sha256()
for group in (r.clusters, r.endpoints, r.listeners, r.routes):
    for m in group:
        out.update(m.SerializeToString(deterministic=True))
print(out.hexdigest())
"""


def test_another_process_with_another_hash_seed_compiles_the_same_bytes() -> None:
    text = "---\n".join(ELECTION_NIGHT)
    index = mesh(endpoints={"stats": (STATS_0,)})
    here = hashlib.sha256(serialized(compile_proxy(index, sidecar("results")))).hexdigest()

    there = subprocess.run(
        [sys.executable, "-c", DIGEST_SCRIPT],
        input=text,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
        timeout=60,
    ).stdout.strip()

    assert there == here


def test_every_proxy_of_the_example_compiles_to_a_consistent_snapshot() -> None:
    index = mesh()

    for proxy in every_proxy(index):
        snapshot = Snapshot.from_resources(compile_proxy(index, proxy))
        assert set(snapshot.versions) == {rt.CLUSTER, rt.ENDPOINT, rt.LISTENER, rt.ROUTE, rt.SECRET}


def test_versions_change_only_when_content_changes() -> None:
    def versions(index: MeshIndex, proxy: Proxy) -> dict[str, str]:
        return Snapshot.from_resources(compile_proxy(index, proxy)).versions

    before = mesh(endpoints={"stats": (STATS_0,)})
    scaled = before.with_endpoints({"stats": (STATS_0, Endpoint("stats", 1, "127.0.0.1", 15021))})
    breaker = BREAKER.replace("consecutiveErrors: 3", "consecutiveErrors: 2")
    stricter = mesh(MESH, RESULTS, STATS, GATEWAY, breaker, endpoints={"stats": (STATS_0,)})
    results, stats = sidecar("results"), sidecar("stats")

    def changed(after: MeshIndex, proxy: Proxy) -> set[str]:
        old = versions(before, proxy)
        return {rt.SHORT[t] for t, v in versions(after, proxy).items() if old[t] != v}

    assert changed(mesh(endpoints={"stats": (STATS_0,)}), results) == set()  # recompiled
    assert changed(scaled, results) == {"EDS"}
    assert changed(stricter, results) == {"CDS"}
    assert versions(scaled, stats) == versions(before, stats)  # stats calls nobody: untouched


def test_a_new_endpoint_is_routed_to_once_compiled() -> None:
    index = mesh(endpoints={"stats": (STATS_0,)}).with_endpoints(
        {"stats": (STATS_0, Endpoint("stats", 1, "127.0.0.1", 15021))}
    )

    assert call(index, "results", "http://stats:8080/").endpoints == ("127.0.0.1:15001", "127.0.0.1:15021")


def test_describe_reads_as_an_explanation() -> None:
    text = call(mesh(), "results", "http://stats:8080/x").describe()

    assert text.splitlines() == [
        "GET http://stats:8080/x on outbound: route 'stats|idempotent' of virtual host 'stats'",
        "  -> cluster outbound|stats: 127.0.0.1:15001",
        "  adds x-policy-ctx: FEC-F101",
        "  timeout 15s",
        "  retries 2x on connect-failure,refused-stream,reset,retriable-headers",
        "  ejects a replica after 3 consecutive 5xx for 30s, at most 100%",
        "  panic threshold 0%",
    ]
    assert call(mesh(), "results", "http://audit/").describe() == (
        "GET http://audit/ on outbound: Envoy answers 404: "
        "interstate: results may only call the services in its spec.calls (stats)"
    )


def test_a_workload_that_requires_a_policy_gets_a_deny_rule_before_its_app() -> None:
    strict_stats = STATS.replace("  port: 8080\n", "  port: 8080\n  requirePolicy: true\n")
    filters = [
        f.name
        for f in inbound_manager(
            compile_proxy(mesh(MESH, RESULTS, strict_stats, GATEWAY), sidecar("stats"))
        ).http_filters
    ]
    relaxed = [f.name for f in inbound_manager(compile_proxy(mesh(), sidecar("stats"))).http_filters]
    # RBAC checks first, then the (usually empty) fault filter of `fault.at: SERVICE`, then the app
    fault, router = "envoy.filters.http.fault", "envoy.filters.http.router"
    assert filters == ["envoy.filters.http.rbac", "envoy.filters.http.rbac", fault, router]
    assert relaxed == ["envoy.filters.http.rbac", fault, router]


def inbound_manager(resources: ProxyResources) -> hcm_pb2.HttpConnectionManager:
    listener = next(x for x in resources.listeners if x.name == "inbound")
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


@pytest.mark.parametrize(("at", "on_callers", "on_service"), [("CALLERS", True, False), ("SERVICE", False, True)])
def test_a_fault_is_applied_by_the_callers_or_by_the_service_itself(
    at: str, on_callers: bool, on_service: bool
) -> None:
    fault = BREAKER.rstrip("\n") + f"\n  fault: {{abort: {{percent: 50, status: 503}}, at: {at}}}\n"
    index = mesh(MESH, RESULTS, STATS, GATEWAY, fault)
    fault_filter = "envoy.filters.http.fault"
    results = compile_proxy(index, sidecar("results"))
    to_stats = [r for rc in results.routes if rc.name == "outbound" for vh in rc.virtual_hosts for r in vh.routes]
    assert any(fault_filter in r.typed_per_filter_config for r in to_stats) is on_callers
    stats = compile_proxy(index, sidecar("stats"))
    inbound = [r for rc in stats.routes if rc.name == "inbound" for vh in rc.virtual_hosts for r in vh.routes]
    assert any(fault_filter in r.typed_per_filter_config for r in inbound) is on_service
    # the inbound listener always carries the (empty) fault filter: turning it on changes routes only
    for listener in stats.listeners:
        manager = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        assert fault_filter in [f.name for f in manager.http_filters]


# --- protocols (issue 12): HTTP/2 between proxies, h2c to gRPC apps, CONNECT tunnels ----------


def cluster_named(resources: ProxyResources, name: str) -> cluster_pb2.Cluster:
    return next(c for c in resources.clusters if c.name == name)


def speaks(cluster: cluster_pb2.Cluster) -> str:
    """'h2' (with '+connect' when it carries WebSockets as extended CONNECT) or 'http/1.1'."""
    packed = cluster.typed_extension_protocol_options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    if packed is None:
        return "http/1.1"
    options = http_options_pb2.HttpProtocolOptions()
    packed.Unpack(options)
    if not options.explicit_http_config.HasField("http2_protocol_options"):
        return "http/1.1"
    return "h2+connect" if options.explicit_http_config.http2_protocol_options.allow_connect else "h2"


def alpn(cluster: cluster_pb2.Cluster) -> list[str]:
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    return list(context.common_tls_context.alpn_protocols)


def test_proxies_speak_http2_to_each_other_and_each_app_its_own_protocol() -> None:
    secure = compile_proxy(mesh(), sidecar("results"), make_credentials("results"))
    to_stats = cluster_named(secure, "outbound|stats")
    assert (speaks(to_stats), alpn(to_stats)) == ("h2+connect", ["h2"])
    # its own HTTP/1.1 app: HTTP/1.1, and h2c for the gRPC calls it gets
    assert speaks(cluster_named(secure, "inbound|results")) == "http/1.1"
    assert speaks(cluster_named(secure, "inbound|results|h2")) == "h2"
    grpc = simulate(secure, "inbound", "results", "/pkg.Svc/Get", "POST", {"content-type": "application/grpc"})
    assert (grpc.cluster, grpc.timeout) == ("inbound|results|h2", None)

    one_at_a_time = MESH.replace("spec: {", "spec: {hopProtocol: http1, ")
    old_way = compile_proxy(mesh(one_at_a_time, RESULTS, STATS, GATEWAY), sidecar("results"), make_credentials())
    assert (speaks(cluster_named(old_way, "outbound|stats")), alpn(cluster_named(old_way, "outbound|stats"))) == (
        "http/1.1",
        [],
    )

    grpc_app = STATS.replace("  port: 8080\n", "  port: 8080\n  protocol: grpc\n")
    own = compile_proxy(mesh(MESH, RESULTS, grpc_app, GATEWAY), sidecar("stats"))
    assert speaks(cluster_named(own, "inbound|stats")) == "h2"
    assert "inbound|stats|h2" not in {c.name for c in own.clusters}  # one h2c cluster does it all


def test_a_connect_tunnel_to_a_declared_service_is_ended_and_routed_inside() -> None:
    resources = compile_proxy(mesh(), sidecar("results"))
    tunnel = simulate(resources, "outbound", "stats:8080", "/", "CONNECT")
    assert (tunnel.route, tunnel.cluster) == ("stats|tunnel", "tunnel|outbound")
    inner = next(x for x in resources.listeners if x.name == "outbound-tunnel")
    assert inner.HasField("internal_listener")  # no socket: only this Envoy reaches it
    inside = simulate(resources, "outbound-tunnel", "stats:8080", "/x", "POST", {"content-type": "application/grpc"})
    assert (inside.route, inside.headers_added) == ("stats|grpc", FEC)
    undeclared = simulate(resources, "outbound", "elsewhere:443", "/", "CONNECT")
    assert (undeclared.status, undeclared.flag) == (404, "NR")


CACHE = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: cache}
spec: {port: 6380, protocol: tcp, run: {command: [redis-server]}}
"""


def test_a_tcp_service_is_offered_on_the_callers_local_port_and_relayed_over_mutual_tls() -> None:
    caller = RESULTS.replace("calls: [stats]", "calls: [stats, cache]\n  localPorts: {cache: 6379}")
    index = mesh(MESH, caller, STATS, CACHE, GATEWAY)
    results = compile_proxy(index, sidecar("results"), make_credentials("results"))
    local = next(x for x in results.listeners if x.name == "tcp|cache")
    assert (local.address.socket_address.address, local.address.socket_address.port_value) == ("127.0.0.1", 6379)
    assert local.enable_reuse_port.value  # the caller's replicas share the port
    # every other listener is its port's one owner: nothing may bind beside it and take a share
    others = [x for x in results.listeners if x.name != "tcp|cache" and not x.HasField("internal_listener")]
    assert {x.name for x in others} == {"inbound", "outbound"}
    assert all(x.HasField("enable_reuse_port") and not x.enable_reuse_port.value for x in others)
    ingress = compile_proxy(index, Proxy.ingress(8080))
    assert [x.enable_reuse_port.value for x in ingress.listeners] == [False]
    relay = tcp_proxy_pb2.TcpProxy()
    local.filter_chains[0].filters[0].typed_config.Unpack(relay)
    assert relay.cluster == "outbound|cache"
    to_cache = cluster_named(results, "outbound|cache")
    assert (speaks(to_cache), alpn(to_cache)) == ("http/1.1", [])  # bytes: no HTTP options, no h2
    assert to_cache.HasField("transport_socket")
    vhosts = {v.name for r in results.routes if r.name == "outbound" for v in r.virtual_hosts}
    assert "cache" not in vhosts  # not called by Host name

    cache = compile_proxy(index, sidecar("cache"), make_credentials("cache"))
    (inbound,) = [x for x in cache.listeners if x.name == "inbound"]
    assert [f.name for f in inbound.filter_chains[0].filters] == ["envoy.filters.network.tcp_proxy"]
    assert inbound.filter_chains[0].HasField("transport_socket")  # mutual TLS
    assert [r.name for r in cache.routes] == ["outbound"]


def guarded_ranges(cluster: cluster_pb2.Cluster) -> list[str]:
    """The address ranges a cluster's upstream RBAC filter refuses (`egress`); [] when unguarded."""
    from envoy.config.rbac.v3 import rbac_pb2
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
    from envoy.extensions.rbac.matchers.upstream_ip_port.v3 import upstream_ip_port_matcher_pb2

    options = http_options_pb2.HttpProtocolOptions()
    if "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" not in cluster.typed_extension_protocol_options:
        return []
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    names = [f.name for f in options.http_filters]
    if not names:
        return []
    assert names == ["envoy.filters.http.upstream_rbac", "envoy.filters.http.upstream_codec"]
    config = rbac_filter.RBAC()
    options.http_filters[0].typed_config.Unpack(config)
    assert config.rules.action == rbac_pb2.RBAC.DENY
    out = []
    for rule in config.rules.policies["host-own-address"].permissions[0].or_rules.rules:
        matcher = upstream_ip_port_matcher_pb2.UpstreamIpPortMatcher()
        rule.matcher.typed_config.Unpack(matcher)
        out.append(f"{matcher.upstream_ip.address_prefix}/{matcher.upstream_ip.prefix_len.value}")
    return out


def test_side_cars_forward_nothing_to_the_hosts_own_addresses() -> None:
    """Issue 25: ALLOW_ANY's pass-through and an ExternalService are refused this host's own
    addresses at the address Envoy connects to; the mesh's own services are not guarded, and an
    ExternalService that says allowLoopback is not either."""
    allow_any = MESH.replace(
        "spec: {defaultPolicy: FEC-F101}", "spec: {defaultPolicy: FEC-F101, outboundTrafficPolicy: {mode: ALLOW_ANY}}"
    )
    externals = """\
apiVersion: mesh.codifyhq.io/v1
kind: ExternalService
metadata: {name: fec-api}
spec: {address: api.open.fec.gov, port: 443, tls: true}
---
apiVersion: mesh.codifyhq.io/v1
kind: ExternalService
metadata: {name: local-ledger}
spec: {address: 127.0.0.1, allowLoopback: true, port: 7000}
"""
    caller = RESULTS.replace("calls: [stats]", "calls: [stats, fec-api, local-ledger]")
    resources = compile_proxy(mesh(allow_any, caller, STATS, GATEWAY, externals), sidecar("results"))
    for name in ("outbound|passthrough", "outbound|fec-api"):
        ranges = guarded_ranges(cluster_named(resources, name))
        assert {"127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16", "::1/128", "::ffff:7f00:0/104"} <= set(ranges)
    assert guarded_ranges(cluster_named(resources, "outbound|local-ledger")) == []
    assert guarded_ranges(cluster_named(resources, "outbound|stats")) == []
    outbound = next(x for x in resources.listeners if x.name == "outbound")
    manager = hcm_pb2.HttpConnectionManager()
    outbound.filter_chains[0].filters[0].typed_config.Unpack(manager)
    [mapper] = manager.local_reply_config.mappers
    assert "this host's own addresses" in mapper.body_format_override.text_format_source.inline_string
