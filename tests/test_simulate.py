"""The simulator follows Envoy's own rules, so the compiler tests that use it can be trusted.

Hand-built route tables check virtual host selection (exact, `*suffix`, `prefix*`, `*`, case,
port) and path matching; the compiler tests cover what interstate itself compiles.
"""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from interstate.compile import Proxy, ProxyResources, compile_proxy
from interstate.config.loader import decode_sources
from interstate.model.index import MeshIndex
from interstate.simulate import route_matches, select_virtual_host, simulate


def table(*domains: list[str], ignore_port: bool = False) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        virtual_hosts=[rc.VirtualHost(name=f"v{i}", domains=d) for i, d in enumerate(domains)],
        ignore_port_in_host_matching=ignore_port,
    )


def chosen(config: route_pb2.RouteConfiguration, host: str) -> str | None:
    vhost = select_virtual_host(config, host)
    return vhost.name if vhost is not None else None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", "v0"),  # exact beats every wildcard
        ("API.Example.COM", "v0"),  # hosts are compared without case
        ("www.example.com", "v2"),  # the longest suffix wins: *.example.com
        ("x.com", "v1"),  # *.com
        ("foo.bar", "v3"),  # prefix wildcard, after all suffixes
        (".com", "v4"),  # a `*` stands for at least one character
        ("other", "v4"),  # the default
        ("api.example.com:8080", "v4"),  # the port is part of the host: only `*` matches
    ],
)
def test_domains_are_matched_in_envoys_order(host: str, expected: str) -> None:
    config = table(["API.example.com"], ["*.com"], ["*.example.com"], ["foo.*"], ["*"])

    assert chosen(config, host) == expected


def test_without_a_default_an_unknown_host_matches_nothing() -> None:
    assert chosen(table(["a"]), "b") is None


def test_the_port_can_be_ignored_when_the_configuration_says_so() -> None:
    assert chosen(table(["stats"]), "stats:8080") is None
    assert chosen(table(["stats"], ignore_port=True), "stats:8080") == "v0"
    assert chosen(table(["[::1]"], ignore_port=True), "[::1]:80") == "v0"


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        (rc.RouteMatch(prefix="/a"), "/abc", True),
        (rc.RouteMatch(prefix="/a"), "/b", False),
        (rc.RouteMatch(path="/a"), "/a?x=1", True),
        (rc.RouteMatch(path="/a"), "/a/", False),
        (rc.RouteMatch(path_separated_prefix="/a"), "/a", True),
        (rc.RouteMatch(path_separated_prefix="/a"), "/a/b?c", True),
        (rc.RouteMatch(path_separated_prefix="/a"), "/a?c", True),
        (rc.RouteMatch(path_separated_prefix="/a"), "/ab", False),
        (rc.RouteMatch(prefix="/A", case_sensitive={"value": False}), "/abc", True),
        (rc.RouteMatch(prefix="/A"), "/abc", False),
    ],
)
def test_paths_match_like_envoy(match: rc.RouteMatch, path: str, expected: bool) -> None:
    assert route_matches(match, path) is expected


def test_an_unsimulated_match_is_refused_rather_than_guessed() -> None:
    with pytest.raises(NotImplementedError):
        route_matches(rc.RouteMatch(safe_regex={"regex": ".*"}), "/")
    with pytest.raises(NotImplementedError):
        route_matches(rc.RouteMatch(prefix="/", headers=[rc.HeaderMatcher(name="x")]), "/")


MESH = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: stats}
spec: {port: 8080, run: {command: [stats]}}
"""


def stats_sidecar() -> ProxyResources:
    index = MeshIndex(decode_sources({"mesh.yaml": MESH}))
    return compile_proxy(index, Proxy.sidecar("stats", 0, inbound_port=1, outbound_port=2, app_port=3))


def test_an_unknown_listener_is_a_lookup_error_listing_the_known_ones() -> None:
    with pytest.raises(LookupError, match="no listener 'ingress'; have: inbound, outbound"):
        simulate(stats_sidecar(), "ingress", "stats", "/")


def test_a_relative_path_is_refused() -> None:
    with pytest.raises(ValueError, match="path must start with '/'"):
        simulate(stats_sidecar(), "inbound", "stats", "x")


def test_header_actions_follow_envoy() -> None:
    resources = stats_sidecar()
    options = [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value="new"), append_action=action)
        for key, action in [
            ("a", base_pb2.HeaderValueOption.ADD_IF_ABSENT),
            ("b", base_pb2.HeaderValueOption.ADD_IF_ABSENT),
            ("c", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS),
            ("d", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS),
            ("e", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ]
    ]
    inbound = next(r for r in resources.routes if r.name == "inbound")
    inbound.virtual_hosts[0].request_headers_to_add.extend(options)

    outcome = simulate(resources, "inbound", "stats", "/", headers={"A": "old", "C": "old"})

    assert outcome.headers_added == {"b": "new", "c": "new", "e": "new"}


def test_envoys_own_errors_carry_their_response_flags() -> None:
    resources = stats_sidecar()
    inbound = next(r for r in resources.routes if r.name == "inbound")
    inbound.virtual_hosts[0].routes[-1].route.cluster = "inbound|gone"  # the route of all but gRPC

    gone = simulate(resources, "inbound", "stats", "/")
    inbound.virtual_hosts[0].domains[:] = ["stats"]
    nowhere = simulate(resources, "inbound", "other", "/")

    assert (gone.status, gone.flag, gone.cluster) == (503, "NC", "inbound|gone")
    assert (nowhere.status, nowhere.flag, nowhere.virtual_host) == (404, "NR", None)
    assert nowhere.describe() == "GET http://other/ on inbound: Envoy answers 404 (NR)"
