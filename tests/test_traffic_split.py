"""TrafficSplit: validation, and what the compiler makes of it for callers and the ingress."""

from __future__ import annotations

from collections import Counter

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc

from interstate.compile import Proxy, compile_proxy
from interstate.config.loader import decode_sources
from interstate.errors import ConfigError
from interstate.model.index import Endpoint, MeshIndex
from interstate.simulate import simulate

BASE = """\
apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: {name: m}
spec: {defaultPolicy: FEC-F101}
---
apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata: {name: public}
spec: {routes: [{pathPrefix: /results, service: results}]}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: results}
spec: {port: 8080, run: {command: [python, a.py]}}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: results-v2}
spec: {port: 8080, version: v2, run: {command: [python, a.py]}}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: newsroom}
spec: {port: 8080, calls: [results], run: {command: [python, a.py]}}
"""
SPLIT = """\
---
apiVersion: mesh.codifyhq.io/v1
kind: TrafficSplit
metadata: {name: results-canary}
spec:
  service: results
  backends: [{service: results, weight: 90}, {service: results-v2, weight: 10}]
  pin: {header: {name: x-canary, value: "true"}, backend: results-v2}
"""


def index(split: str = SPLIT) -> MeshIndex:
    return MeshIndex(decode_sources({"mesh.yaml": BASE + split}))


def routes_to_results(proxy: Proxy, idx: MeshIndex) -> list[rc.Route]:
    resources = compile_proxy(idx, proxy)
    config = next(r for r in resources.routes if r.name in ("outbound", "ingress"))
    vhost = next(v for v in config.virtual_hosts if v.name in ("results", "ingress"))
    # (the ingress's policy-header guard routes are copies of these; see test_compile)
    return [r for r in vhost.routes if r.HasField("route") and not r.name.startswith("policy-")]


@pytest.mark.parametrize(
    "proxy",
    [Proxy.sidecar("newsroom", 0, inbound_port=1, outbound_port=2, app_port=3), Proxy.ingress(8080)],
    ids=["side-car", "ingress"],
)
def test_callers_split_by_weight_and_pin_the_canary_header(proxy: Proxy) -> None:
    idx = index()
    routes = [r for r in routes_to_results(proxy, idx) if not r.name.endswith("|tunnel")]  # CONNECT only
    pinned = [r for r in routes if r.name.endswith("|pinned")]
    assert len(pinned) == 1 and routes.index(pinned[0]) == 0  # before the weighted routes
    assert pinned[0].route.cluster == "outbound|results-v2"
    assert [(h.name, h.string_match.exact) for h in pinned[0].match.headers] == [("x-canary", "true")]
    for route in routes[1:]:
        weights = [(c.name, c.weight.value) for c in route.route.weighted_clusters.clusters]
        assert weights == [("outbound|results", 90), ("outbound|results-v2", 10)]
    clusters = {c.name for c in compile_proxy(idx, proxy).clusters}
    assert {"outbound|results", "outbound|results-v2"} <= clusters


def test_without_a_split_a_call_goes_to_the_service_itself() -> None:
    routes = routes_to_results(Proxy.ingress(8080), index(split=""))
    assert {r.route.cluster for r in routes} == {"outbound|results"}


@pytest.mark.parametrize(
    ("backends", "field", "message"),
    [
        (
            "[{service: results, weight: 90}, {service: results-v2, weight: 20}]",
            "spec.backends",
            "weights must sum to 100, these sum to 110 (90 + 20)",
        ),
        (
            "[{service: results, weight: 110}, {service: results-v2, weight: -10}]",
            "spec.backends[0].weight",
            "less than or equal to 100",
        ),
        (
            "[{service: results, weight: 50}, {service: results, weight: 50}]",
            "spec.backends[1].service",
            "'results' is listed twice",
        ),
        (
            "[{service: results, weight: 50}, {service: results-v3, weight: 50}]",
            "spec.backends[1].service",
            "unknown service 'results-v3'",
        ),
        (
            "[{service: results, weight: 50.5}, {service: results-v2, weight: 49.5}]",
            "spec.backends[0].weight",
            "valid integer",
        ),
    ],
)
def test_invalid_splits_are_refused_naming_the_field(backends: str, field: str, message: str) -> None:
    split = SPLIT.replace("[{service: results, weight: 90}, {service: results-v2, weight: 10}]", backends)
    split = split.replace('  pin: {header: {name: x-canary, value: "true"}, backend: results-v2}\n', "")
    with pytest.raises(ConfigError) as caught:
        index(split)
    assert any(i.field == field and message in i.message for i in caught.value.issues), caught.value


def test_the_pinned_backend_must_be_one_of_the_backends() -> None:
    with pytest.raises(ConfigError) as caught:
        index(SPLIT.replace("backend: results-v2}", "backend: newsroom}"))
    assert [i.field for i in caught.value.issues] == ["spec.pin.backend"]


def test_as_calls_a_split_sends_nine_in_ten_to_results_and_the_pinned_header_to_the_canary() -> None:
    """The split simulated as requests (`simulate` draws a weighted cluster as Envoy does): of
    100 evenly spread draws, 90 reach results' endpoints and 10 results-v2's, whatever the
    method; the pin header always reaches the canary."""
    endpoints = {
        "results": (Endpoint("results", 0, "127.0.0.1", 15001),),
        "results-v2": (Endpoint("results-v2", 0, "127.0.0.1", 15011),),
    }
    idx = MeshIndex(decode_sources({"mesh.yaml": BASE + SPLIT}), endpoints)
    resources = compile_proxy(idx, Proxy.sidecar("newsroom", 0, inbound_port=1, outbound_port=2, app_port=3))
    for method in ("GET", "POST"):
        reached = Counter(
            simulate(resources, "outbound", "results:8080", "/r", method, draw=n / 100).endpoints for n in range(100)
        )
        assert reached == {("127.0.0.1:15001",): 90, ("127.0.0.1:15011",): 10}, (method, reached)
    one = simulate(resources, "outbound", "results:8080", "/r", draw=0.5)
    assert one.split == (("outbound|results", 90), ("outbound|results-v2", 10)) and "split" in one.describe()
    pinned = [
        simulate(resources, "outbound", "results:8080", "/r", headers={"x-canary": "true"}, draw=n / 10)
        for n in range(10)
    ]
    assert {o.cluster for o in pinned} == {"outbound|results-v2"} and not pinned[0].split
