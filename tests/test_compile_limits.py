"""Envoy's limits against hostile HTTP (compile/limits.py), as the compiler hands them to Envoy.

Each test asks one question of the compiled config: "does the ingress answer 431 past 32 KiB of
headers?" is "is the ingress's max_request_headers_kb limits.MAX_REQUEST_HEADERS_KB?". What a
client then really gets is tests/test_e2e_hostile_http.py; the last tests here hand the compiled
ingress and bootstrap to the real Envoy, which must accept every knob.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TypeAlias

import envoy_static
import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from jwt_tokens import Signer

from interstate.compile import Proxy, ProxyResources, authz, bootstrap, compile_proxy, limits
from interstate.config.loader import decode_sources
from interstate.model.index import Endpoint, MeshIndex
from interstate.standalone.envoy import find_envoy

HCM: TypeAlias = hcm_pb2.HttpConnectionManager
ROUTER = "envoy.filters.http.router"

MESH = """\
apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: {name: election-night}
spec: {trustDomain: fec.gov.local, defaultPolicy: FEC-F101}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: results}
spec: {port: 8080, run: {command: [python, apps/results.py]}}
---
apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata: {name: public}
spec:
  routes: [{pathPrefix: /results, service: results}]
"""
TOKENS = """\
apiVersion: mesh.codifyhq.io/v1
kind: TokenPolicy
metadata: {name: newsroom-tokens}
spec:
  issuers:
    - issuer: https://auth.fec.gov
      audiences: [results-api]
      jwks: {inline: '%s'}
  roleClaim: roles
  require:
    - {pathPrefix: /results, roles: [newsroom]}
    - {pathPrefix: /results/live/}
"""
SLOW = """\
apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: {name: slow-results}
spec:
  destination: {service: results}
  timeout: 60s
"""


def mesh(*extra: str) -> MeshIndex:
    config = decode_sources({"mesh.yaml": "---\n".join([MESH, *extra])})
    return MeshIndex(config, {"results": (Endpoint("results", 0, "127.0.0.1", 15001),)})


def tokens() -> str:
    return TOKENS % Signer().jwks()


def ingress(index: MeshIndex) -> ProxyResources:
    return compile_proxy(index, Proxy.ingress(8000))


def sidecar(index: MeshIndex) -> ProxyResources:
    return compile_proxy(index, Proxy.sidecar("results", 0, inbound_port=15001, outbound_port=15002, app_port=18080))


def listener(resources: ProxyResources, name: str) -> listener_pb2.Listener:
    return next(x for x in resources.listeners if x.name == name)


def manager(resources: ProxyResources, name: str) -> HCM:
    out = HCM()
    listener(resources, name).filter_chains[0].filters[0].typed_config.Unpack(out)
    return out


def filters(resources: ProxyResources, name: str) -> list[str]:
    return [f.name for f in manager(resources, name).http_filters]


def seconds(value: object) -> float:
    return float(value.ToNanoseconds()) / 1e9  # type: ignore[attr-defined]


# ---- the ingress ------------------------------------------------------------------------------


def test_the_ingress_answers_431_past_its_header_size_and_count() -> None:
    hcm = manager(ingress(mesh()), "ingress")
    assert hcm.max_request_headers_kb.value == limits.MAX_REQUEST_HEADERS_KB == 32
    assert hcm.common_http_protocol_options.max_headers_count.value == limits.MAX_HEADERS_COUNT == 64


def test_the_ingress_answers_413_past_its_body_limit_after_every_other_check() -> None:
    names = filters(ingress(mesh(tokens())), "ingress")
    # last before the router: a request refused for its token or role is refused unread
    assert names[-2:] == [limits.BUFFER_FILTER, ROUTER]
    assert names.index("envoy.filters.http.jwt_authn") < names.index(limits.BUFFER_FILTER)
    assert names.index("envoy.filters.http.rbac") < names.index(limits.BUFFER_FILTER)
    body = buffer_pb2.Buffer()
    manager(ingress(mesh()), "ingress").http_filters[-2].typed_config.Unpack(body)
    assert body.max_request_bytes.value == limits.MAX_REQUEST_BODY_BYTES == 1024 * 1024


def test_the_ingress_reads_ahead_at_most_32_kib_per_connection() -> None:
    out = listener(ingress(mesh()), "ingress")
    assert out.per_connection_buffer_limit_bytes.value == limits.CONNECTION_BUFFER_BYTES == 32 * 1024


def test_slow_clients_are_cut_by_idle_timeouts_not_by_a_bound_on_whole_requests() -> None:
    hcm = manager(ingress(mesh()), "ingress")
    assert seconds(hcm.request_headers_timeout) == limits.REQUEST_HEADERS_TIMEOUT.total_seconds() == 10
    assert seconds(hcm.stream_idle_timeout) == limits.STREAM_IDLE_TIMEOUT.total_seconds() == 20
    assert seconds(hcm.common_http_protocol_options.idle_timeout) == limits.CONNECTION_IDLE_TIMEOUT.total_seconds()
    # long-lived streams (issue 12) must not be cut while bytes move: no request_timeout
    assert not hcm.HasField("request_timeout")
    assert not hcm.common_http_protocol_options.HasField("max_stream_duration")


def test_http2_clients_get_envoys_edge_limits() -> None:
    h2 = manager(ingress(mesh()), "ingress").http2_protocol_options
    assert h2.max_concurrent_streams.value == limits.H2_MAX_CONCURRENT_STREAMS == 100
    assert h2.initial_stream_window_size.value == limits.H2_INITIAL_STREAM_WINDOW_BYTES == 65536
    assert h2.initial_connection_window_size.value == limits.H2_INITIAL_CONNECTION_WINDOW_BYTES
    assert h2.max_outbound_frames.value == limits.H2_MAX_OUTBOUND_FRAMES
    assert h2.max_outbound_control_frames.value == limits.H2_MAX_OUTBOUND_CONTROL_FRAMES
    assert h2.max_consecutive_inbound_frames_with_empty_payload.value == limits.H2_MAX_CONSECUTIVE_EMPTY_FRAMES == 1


def test_the_ingress_decides_on_normalized_paths_and_redirects_escaped_slashes() -> None:
    hcm = manager(ingress(mesh()), "ingress")
    assert hcm.normalize_path.value and hcm.merge_slashes
    assert hcm.path_with_escaped_slashes_action == HCM.UNESCAPE_AND_REDIRECT


def test_a_route_timeout_longer_than_the_stream_idle_timeout_gets_its_own_idle_timeout() -> None:
    def ingress_routes(index: MeshIndex) -> list[rc.Route]:
        [config] = [r for r in ingress(index).routes if r.name == "ingress"]
        streams = ("|grpc", "|upgrade", "|events")  # no total timeout: see test_compile's streams
        return [r for r in config.virtual_hosts[0].routes if r.HasField("route") and not r.name.endswith(streams)]

    slow = ingress_routes(mesh(SLOW))
    assert slow and all(seconds(r.route.idle_timeout) == 60 == seconds(r.route.timeout) for r in slow)
    # the default 15 s route timeout is within the connection manager's 20 s
    assert all(not r.route.HasField("idle_timeout") for r in ingress_routes(mesh()))


# ---- token paths: every spelling of a required path needs the token ---------------------------


def token_rules() -> list[str]:
    authn = jwt_pb2.JwtAuthentication()
    hcm = manager(ingress(mesh(tokens())), "ingress")
    next(f for f in hcm.http_filters if f.name == "envoy.filters.http.jwt_authn").typed_config.Unpack(authn)
    return [rule.match.safe_regex.regex for rule in authn.rules]


def requires_token(path: str) -> bool:
    """What Envoy's first-match rule list decides for a path (query removed, as Envoy does)."""
    bare = path.partition("?")[0]
    return any(re.fullmatch(rule, bare) for rule in token_rules())


@pytest.mark.parametrize(
    "path", ["/results", "/results/", "/results/x", "/RESULTS", "/Results/x", "/results;x=1", "/results?x=1"]
)
def test_every_spelling_of_a_required_prefix_needs_a_token(path: str) -> None:
    assert requires_token(path)


@pytest.mark.parametrize("path", ["/resultsx", "/results.", "/public", "/", "/x/results"])
def test_other_paths_need_no_token(path: str) -> None:
    assert not requires_token(path)


def test_longer_token_prefixes_come_first() -> None:
    # Envoy applies the first rule that matches
    assert token_rules() == [authz.prefix_regex(p, any_case=True) for p in ("/results/live/", "/results")]


def test_role_rules_match_every_spelling_too() -> None:
    hcm = manager(ingress(mesh(tokens())), "ingress")
    config = rbac_filter.RBAC()
    next(f for f in hcm.http_filters if f.name == "envoy.filters.http.rbac").typed_config.Unpack(config)
    regex = config.rules.policies["roles/results"].permissions[0].url_path.path.safe_regex.regex
    assert regex.startswith("(?i)")
    assert all(re.fullmatch(regex, p) for p in ("/results", "/RESULTS/x", "/results;x"))


# ---- a side-car's inbound listener ---------------------------------------------------------------


def test_the_inbound_listener_states_envoys_header_limits_and_a_headers_timeout() -> None:
    hcm = manager(sidecar(mesh()), "inbound")
    assert hcm.max_request_headers_kb.value == limits.INBOUND_MAX_REQUEST_HEADERS_KB
    assert hcm.common_http_protocol_options.max_headers_count.value == limits.INBOUND_MAX_HEADERS_COUNT
    # room for what the ingress lets in and adds on the way
    assert limits.INBOUND_MAX_REQUEST_HEADERS_KB > limits.MAX_REQUEST_HEADERS_KB
    assert limits.INBOUND_MAX_HEADERS_COUNT > limits.MAX_HEADERS_COUNT
    assert seconds(hcm.request_headers_timeout) == limits.REQUEST_HEADERS_TIMEOUT.total_seconds()


def test_the_inbound_listener_keeps_pooled_connections_and_streams_and_bodies_as_envoy_does() -> None:
    resources = sidecar(mesh())
    hcm = manager(resources, "inbound")
    assert not hcm.common_http_protocol_options.HasField("idle_timeout")
    assert not hcm.HasField("stream_idle_timeout") and not hcm.HasField("request_timeout")
    assert limits.BUFFER_FILTER not in filters(resources, "inbound")
    assert not listener(resources, "inbound").HasField("per_connection_buffer_limit_bytes")
    assert hcm.path_with_escaped_slashes_action == HCM.UNESCAPE_AND_FORWARD


def test_the_apps_own_proxy_listener_is_unchanged() -> None:
    resources = sidecar(mesh())
    hcm = manager(resources, "outbound")
    assert not hcm.HasField("max_request_headers_kb") and not hcm.HasField("request_headers_timeout")
    assert limits.BUFFER_FILTER not in filters(resources, "outbound")


# ---- the bootstrap -------------------------------------------------------------------------------


def runtime_layers(config: dict[str, object]) -> list[dict[str, object]]:
    return config["layered_runtime"]["layers"]  # type: ignore[index,no-any-return]


def test_every_envoy_closes_connections_that_reset_streams_prematurely() -> None:
    config = bootstrap.build("ingress~ingress", "", 15000, "127.0.0.1", 15010)
    [static, admin] = runtime_layers(config)
    assert static["static_layer"] == {
        "overload.premature_reset_total_stream_count": limits.PREMATURE_RESET_TOTAL_STREAM_COUNT,
        "overload.premature_reset_min_stream_lifetime_seconds": limits.PREMATURE_RESET_MIN_LIFETIME_S,
    }
    assert admin == {"name": "admin", "admin_layer": {}}  # Envoy's own /runtime_modify keeps working


# ---- the real Envoy accepts every knob ------------------------------------------------------------


@pytest.mark.e2e
def test_envoy_accepts_the_ingress_with_every_limit_tokens_and_a_long_timeout(tmp_path: Path) -> None:
    resources = ingress(mesh(tokens(), SLOW))
    config = envoy_static.to_json(envoy_static.static_bootstrap(resources, "ingress~ingress", "ingress"))
    assert envoy_static.dynamic_leftovers(config) == []
    config["layered_runtime"] = bootstrap.build("ingress~ingress", "", 0, "127.0.0.1", 1)["layered_runtime"]
    assert '"max_request_bytes"' in json.dumps(config)

    result = envoy_static.validate(Path(find_envoy()), config, tmp_path / "bootstrap.json")

    assert result.ok, result.describe()


@pytest.mark.e2e
def test_envoy_accepts_the_inbound_listener_with_its_limits(tmp_path: Path) -> None:
    resources = sidecar(mesh())
    config = envoy_static.to_json(envoy_static.static_bootstrap(resources, "sidecar~results-0", "results"))

    result = envoy_static.validate(Path(find_envoy()), config, tmp_path / "bootstrap.json")

    assert result.ok, result.describe()
