"""Every compiled proxy of many meshes, checked by the real Envoy (`envoy --mode validate`).

`interstate.simulate` follows requests through compiled resources but cannot see what Envoy
itself refuses (twice Envoy NACKed config every unit test accepted). Here each mesh variant is
compiled for the ingress and for a side-car of every injected workload, with mTLS credentials
and without, made static by tests/envoy_static.py and handed to Envoy. One case is
variant x proxy x {mtls, plain}. The negative tests prove the harness sees what Envoy rejects in
each part it converts (listener, inlined route, static endpoints, static secrets).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import envoy_static
import pytest
import yaml
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from helpers_xds import make_credentials
from mesh_runner import EXAMPLE

from interstate.ca import spiffe
from interstate.ca.authority import Authority, utcnow
from interstate.compile import Proxy, ProxyResources, bootstrap, compile_proxy
from interstate.compile.bootstrap import XdsTls
from interstate.config import decode_sources, load
from interstate.model.gateway import Gateway
from interstate.model.index import Endpoint, MeshConfig, MeshIndex
from interstate.model.workload import Workload
from interstate.standalone.envoy import find_envoy

pytestmark = pytest.mark.e2e

API = "mesh.codifyhq.io/v1"
INJECT = "mesh.codifyhq.io/inject"
POLICY = "mesh.codifyhq.io/policy"


# ---- mesh variants, as YAML ----------------------------------------------------------------


def doc(kind: str, name: str, spec: dict[str, Any] | None = None, **annotations: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    out: dict[str, Any] = {"apiVersion": API, "kind": kind, "metadata": metadata}
    if spec is not None:
        out["spec"] = spec
    return out


def mesh(**spec: Any) -> dict[str, Any]:
    return doc("Mesh", "election-night", spec)


def workload(
    name: str, calls: tuple[str, ...] = (), annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    body = {"port": 8080, "run": {"command": ["python", f"apps/{name}.py"]}, "calls": list(calls), **spec}
    return doc("Workload", name, body, **(annotations or {}))


def gateway(*routes: tuple[str, str]) -> dict[str, Any]:
    return doc("Gateway", "public", {"routes": [{"pathPrefix": p, "service": s} for p, s in routes]})


def traffic_policy(service: str, **outlier: Any) -> dict[str, Any]:
    return doc(
        "TrafficPolicy", f"{service}-breaker", {"destination": {"service": service}, "outlierDetection": outlier}
    )


def access_policy(name: str, service: str, *allow: dict[str, Any]) -> dict[str, Any]:
    return doc("AccessPolicy", name, {"destination": {"service": service}, "allow": list(allow)})


MESH = mesh(trustDomain="fec.gov.local", defaultPolicy="FEC-F101")
RESULTS = workload("results", ("stats",), {INJECT: "enabled", POLICY: "FEC-F101"}, replicas=2)
STATS = workload("stats", annotations={POLICY: "FEC-F101"})
GATEWAY = gateway(("/results", "results"))
BREAKER = traffic_policy("stats", consecutiveErrors=3, baseEjectionTime="30s")

# The access rules of the chapter's compliance story: methods, several prefixes (one ending
# in '/', matching everything below it), the ingress and a workload as callers.
STATS_ACCESS = access_policy(
    "stats-readers",
    "stats",
    {"from": ["ingress", "results"], "methods": ["GET", "HEAD"], "pathPrefixes": ["/stats", "/api/v1/", "/healthz"]},
    {"from": ["results"], "methods": ["POST"]},
    {"from": ["results"], "pathPrefixes": ["/"]},
)
STATS_ACCESS_2 = access_policy("stats-ingress", "stats", {"from": ["ingress"]})
RESULTS_ACCESS = access_policy("results-public", "results", {"from": ["ingress"], "pathPrefixes": ["/results/"]})
LEGACY = workload("legacy", annotations={INJECT: "disabled"}, replicas=2)
AUDIT = workload("audit", replicas=0)
MANY_ROUTES = gateway(
    ("/results", "results"),
    ("/results/live/", "results"),
    ("/api/v1/results", "results"),
    ("/stats", "stats"),
    ("/", "results"),
)

RESILIENCE_FULL = doc(
    "TrafficPolicy",
    "stats-resilience",
    {
        "destination": {"service": "stats"},
        "outlierDetection": {"consecutiveErrors": 3, "consecutiveGatewayErrors": 2, "baseEjectionTime": "30s"},
        "connectionPool": {
            "maxConnections": 10,
            "maxPendingRequests": 5,
            "maxRequests": 20,
            "maxRequestsPerConnection": 100,
        },
        "retries": {
            "attempts": 3,
            "perTryTimeout": "300ms",
            "retryOn": ["5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx"],
            "backoff": {"baseInterval": "10ms", "maxInterval": "1s"},
            "budget": {"percent": 20, "minConcurrency": 1},
        },
        "timeout": "2s",
        "loadBalancer": {"policy": "RING_HASH", "hashOn": {"cookie": {"name": "session", "ttl": "1h"}}},
        "fault": {"abort": {"percent": 50, "status": 503}, "delay": {"percent": 10, "fixedDelay": "2s"}},
    },
)
RESILIENCE_HEADER = doc(
    "TrafficPolicy",
    "audit-sticky",
    {
        "destination": {"service": "audit"},
        "retries": {"attempts": 0},
        "loadBalancer": {"policy": "RING_HASH", "hashOn": {"header": "x-user"}},
    },
)
RESILIENCE_LEAST = doc(
    "TrafficPolicy",
    "results-least",
    {"destination": {"service": "results"}, "loadBalancer": {"policy": "LEAST_REQUEST"}},
)

VARIANTS: dict[str, list[dict[str, Any]]] = {
    # "election-night" itself is the example folder, read by interstate.config.load
    "egress": [
        MESH,
        workload("results", ("stats", "fec-api", "irs-api"), {POLICY: "FEC-F101"}),
        STATS,
        GATEWAY,
        doc(
            "ExternalService",
            "fec-api",
            {
                "address": "127.0.0.1",
                "allowLoopback": True,  # the tests' systems outside the mesh listen on loopback
                "port": 9443,
                "tls": True,
                "timeout": "5s",
                "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": ["5xx"]},
                "outlierDetection": {"consecutiveErrors": 5},
                "connectionPool": {"maxConnections": 10},
            },
        ),
        doc("ExternalService", "irs-api", {"address": "irs.example", "port": 8080}),  # guarded (`egress`)
    ],
    "boundary-allow-any": [
        mesh(
            defaultPolicy="FEC-F101",
            allowedHeaders=["x-correlation-id", "x-results-*", "traceparent"],
            outboundTrafficPolicy={"mode": "ALLOW_ANY"},
        ),
        workload("results", ("stats", "fec-api"), {POLICY: "FEC-F101"}),
        STATS,
        GATEWAY,
        doc("ExternalService", "fec-api", {"address": "127.0.0.1", "allowLoopback": True, "port": 9443}),
    ],
    "fault-in-service": [
        MESH,
        RESULTS,
        STATS,
        GATEWAY,
        doc(
            "TrafficPolicy",
            "stats-hiccup",
            {"destination": {"service": "stats"}, "fault": {"abort": {"percent": 50, "status": 503}, "at": "SERVICE"}},
        ),
    ],
    "boundary-allow-all-headers": [mesh(allowedHeaders=["*"]), RESULTS, STATS, GATEWAY],
    # issue 12: no Mesh document and no policy ID anywhere (Envoy refused `(?!)` in RE2)
    "no-policy-anywhere": [workload("results", ("stats",)), workload("stats"), GATEWAY],
    # issue 12: a tcp service on a caller's local port, a gRPC app, a mesh of HTTP/1.1 hops
    "protocols": [
        mesh(defaultPolicy="FEC-F101", mtls={"mode": "PERMISSIVE"}),
        workload("results", ("stats", "cache", "ticker"), {POLICY: "FEC-F101"}, localPorts={"cache": 6379}),
        STATS,
        workload("cache", port=6380, protocol="tcp"),
        workload("ticker", port=9090, protocol="grpc"),
        GATEWAY,
    ],
    "hops-over-http1": [mesh(defaultPolicy="FEC-F101", hopProtocol="http1"), RESULTS, STATS, GATEWAY],
    "traffic-split": [
        MESH,
        RESULTS,
        STATS,
        workload("results-v2", ("stats",), version="v2"),
        workload("newsroom", ("results",)),
        GATEWAY,
        doc(
            "TrafficSplit",
            "results-canary",
            {
                "service": "results",
                "backends": [{"service": "results", "weight": 90}, {"service": "results-v2", "weight": 10}],
                "pin": {"header": {"name": "x-canary", "value": "true"}, "backend": "results-v2"},
                "stickyBy": {"cookie": {"name": "canary-session", "ttl": "1h"}},
            },
        ),
    ],
    "resilience-everything": [
        MESH,
        workload("results", ("stats", "audit"), {POLICY: "FEC-F101"}, replicas=2),
        STATS,
        workload("audit"),
        GATEWAY,
        RESILIENCE_FULL,
        RESILIENCE_HEADER,
        RESILIENCE_LEAST,
    ],
    "outlier-all-fields": [
        MESH,
        workload("results", ("stats", "audit"), {POLICY: "FEC-F101"}, replicas=2),
        STATS,
        workload("audit"),
        GATEWAY,
        traffic_policy("stats", consecutiveErrors=7, baseEjectionTime="45s", interval="500ms", maxEjectionPercent=50),
        # the bounds the model accepts
        traffic_policy("results", consecutiveErrors=1, baseEjectionTime="24h", interval="1ms", maxEjectionPercent=0),
        traffic_policy(
            "audit", consecutiveErrors=1000, baseEjectionTime="1h30m", interval="2.5s", maxEjectionPercent=100
        ),
    ],
    "workload-permissive": [
        MESH,
        RESULTS,
        workload("stats", annotations={POLICY: "FEC-F101"}, mtls={"mode": "PERMISSIVE"}),
        GATEWAY,
        BREAKER,
    ],
    "mesh-permissive": [
        mesh(trustDomain="fec.gov.local", defaultPolicy="FEC-F101", mtls={"mode": "PERMISSIVE"}),
        workload("results", ("stats",), {POLICY: "FEC-F101"}, mtls={"mode": "STRICT"}),
        STATS,
        GATEWAY,
    ],
    "access-policy": [
        MESH,
        RESULTS,
        STATS,
        gateway(("/results", "results"), ("/stats", "stats")),
        STATS_ACCESS,
        STATS_ACCESS_2,
        RESULTS_ACCESS,
    ],
    "inject-disabled": [
        MESH,
        workload("results", ("stats", "legacy"), {POLICY: "FEC-F101"}),
        workload("stats", ("legacy",)),
        LEGACY,
        gateway(("/results", "results"), ("/legacy", "legacy")),
        traffic_policy("legacy", consecutiveErrors=2),
    ],
    "custom-policy-header": [
        mesh(trustDomain="fec.gov.local", policyHeader="x-fec-policy-id", defaultPolicy="FEC-F101"),
        RESULTS,
        STATS,
        GATEWAY,
    ],
    "gateway-routes": [MESH, RESULTS, STATS, MANY_ROUTES, BREAKER],
    "no-default-policy": [
        mesh(trustDomain="fec.gov.local"),
        RESULTS,
        workload("stats"),
        GATEWAY,
    ],
    "no-mesh-no-gateway": [workload("stats")],
    # names the model accepts that are unusual for Envoy: regex metacharacters in RBAC path
    # prefixes, non-ASCII, a one-letter header, a long trust domain with dashes
    "odd-but-valid-names": [
        mesh(trustDomain="elections-2024.fec-agency.gov.local", policyHeader="p", defaultPolicy="FEC_F.101-x"),
        workload("results", ("stats",), version="2024.11_rc-1"),
        STATS,
        gateway(("/r%C3%A9sultats", "results"), ("/a;b", "results"), ("/v1.0/*", "stats"), ("/x%2Fy/", "stats")),
        access_policy(
            "stats-odd",
            "stats",
            {"from": ["ingress", "results"], "pathPrefixes": ["/v1.0/(x)[y]{z}|a+b*^$", "/~user/", "/~r_sultats-2"]},
        ),
    ],
    "everything": [
        mesh(trustDomain="fec.gov.local", policyHeader="x-fec-policy-id", mtls={"mode": "PERMISSIVE"}),
        workload("results", ("stats", "legacy", "audit"), {POLICY: "FEC-F101"}, replicas=2),
        workload("stats", ("legacy",), mtls={"mode": "STRICT"}),
        LEGACY,
        AUDIT,
        MANY_ROUTES,
        BREAKER,
        traffic_policy("audit", consecutiveErrors=1, interval="250ms", maxEjectionPercent=0),
        STATS_ACCESS,
        RESULTS_ACCESS,
        access_policy("audit-writers", "audit", {"from": ["results"], "methods": ["PUT"], "pathPrefixes": ["/log"]}),
    ],
}


ALL_VARIANTS = ["election-night", *VARIANTS]


@cache
def mesh_config(variant: str) -> MeshConfig:
    if variant == "election-night":
        return load(EXAMPLE)
    return decode_sources({f"{variant}.yaml": yaml.safe_dump_all(VARIANTS[variant], sort_keys=False)})


# ---- proxies and endpoints -----------------------------------------------------------------

INGRESS_PORT = 18000


def ports(position: int, replica: int) -> dict[str, int]:
    """Distinct, fixed ports per workload and replica (validate mode binds nothing)."""
    base = 20000 + 100 * position + 10 * replica
    return {"inbound_port": base + 1, "outbound_port": base + 2, "app_port": base + 3}


def workloads(config: MeshConfig) -> list[Workload]:
    return sorted(config.of_kind(Workload), key=lambda w: w.name)


@cache
def mesh_index(variant: str) -> MeshIndex:
    """The variant with every replica ready: a side-car's inbound port, or the app itself when
    the workload is not injected (replicas: 0 gives an empty ClusterLoadAssignment)."""
    config = mesh_config(variant)
    endpoints: dict[str, tuple[Endpoint, ...]] = {}
    for position, w in enumerate(workloads(config)):
        key = "inbound_port" if w.injected else "app_port"
        endpoints[w.name] = tuple(
            Endpoint(w.name, r, "127.0.0.1", ports(position, r)[key], w.spec.version) for r in range(w.spec.replicas)
        )
    return MeshIndex(config, endpoints)


def proxies(config: MeshConfig) -> list[Proxy]:
    """What the supervisor runs: the ingress when there is a Gateway, a side-car per injected
    workload (replica 0 stands for all: replicas differ only in node ID and ports)."""
    out = [Proxy.ingress(INGRESS_PORT)] if config.of_kind(Gateway) else []
    for position, w in enumerate(workloads(config)):
        if w.injected:
            out.append(Proxy.sidecar(w.name, 0, **ports(position, 0)))
    return out


@dataclasses.dataclass(frozen=True)
class Case:
    variant: str
    proxy: Proxy
    mtls: bool

    def __str__(self) -> str:
        return f"{self.variant}/{self.proxy.node_id}/{'mtls' if self.mtls else 'plain'}"


# Cases Envoy rejects today: str(case) -> the bug. strict: a fixed bug must drop its entry.
KNOWN_REJECTIONS: dict[str, str] = {}


def cases() -> list[Any]:
    out = []
    for variant in ALL_VARIANTS:
        for proxy in proxies(mesh_config(variant)):
            for mtls in (True, False):
                case = Case(variant, proxy, mtls)
                bug = KNOWN_REJECTIONS.get(str(case))
                marks = [pytest.mark.xfail(reason=bug, strict=True)] if bug else []
                out.append(pytest.param(case, id=str(case), marks=marks))
    return out


# ---- running Envoy -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def envoy() -> Path:
    return Path(find_envoy())


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.create("interstate.local", utcnow())


def compile_case(case: Case, authority: Authority) -> ProxyResources:
    # make_credentials issues for interstate.local whatever the variant's trust domain: validate
    # mode loads certificates but makes no handshake, so only their form matters here.
    credentials = make_credentials(case.proxy.service or "ingress", authority) if case.mtls else None
    return compile_proxy(mesh_index(case.variant), case.proxy, credentials)


def static_config(resources: ProxyResources, proxy: Proxy) -> dict[str, Any]:
    config = envoy_static.to_json(envoy_static.static_bootstrap(resources, proxy.node_id, proxy.service or "ingress"))
    # Envoy's validate mode would accept a leftover dynamic reference without looking at it.
    assert envoy_static.dynamic_leftovers(config) == []
    return config


@pytest.mark.parametrize("case", cases())
def test_envoy_accepts_the_compiled_config(case: Case, envoy: Path, authority: Authority, tmp_path: Path) -> None:
    resources = compile_case(case, authority)
    config = static_config(resources, case.proxy)
    assert bool(config["static_resources"].get("secrets")) == case.mtls  # the mTLS half is really mTLS

    result = envoy_static.validate(envoy, config, tmp_path / "bootstrap.json")

    assert result.ok, result.describe()


# What each variant is for, seen in its compiled config (mTLS): (variant, proxy, text, present).
# Without these a variant could silently stop exercising what it is named for.
COVERAGE = [
    ("egress", "sidecar~results-0", '"type": "STRICT_DNS"', True),
    ("egress", "sidecar~results-0", '"sni": "127.0.0.1"', True),
    ("traffic-split", "ingress~ingress", '"weighted_clusters"', True),
    ("traffic-split", "sidecar~newsroom-0", '"cluster": "outbound|results-v2"', True),
    ("resilience-everything", "sidecar~results-0", '"lb_policy": "RING_HASH"', True),
    ("resilience-everything", "sidecar~results-0", '"budget_percent": {"value": 20.0}', True),
    ("resilience-everything", "sidecar~results-0", "envoy.filters.http.fault", True),
    ("resilience-everything", "sidecar~results-0", '"header_name": "x-user"', True),
    ("resilience-everything", "ingress~ingress", '"lb_policy": "LEAST_REQUEST"', True),
    ("election-night", "sidecar~results-0", '"consecutive_5xx": 3', True),
    ("outlier-all-fields", "sidecar~results-0", '"max_ejection_percent": 50', True),
    ("outlier-all-fields", "sidecar~results-0", '"consecutive_5xx": 1000', True),
    ("outlier-all-fields", "ingress~ingress", '"interval": "0.001s"', True),
    ("workload-permissive", "sidecar~stats-0", '"transport_protocol": "tls"', True),
    ("workload-permissive", "sidecar~results-0", '"transport_protocol": "tls"', False),
    ("mesh-permissive", "sidecar~stats-0", "envoy.filters.listener.tls_inspector", True),
    ("mesh-permissive", "sidecar~results-0", "envoy.filters.listener.tls_inspector", False),
    ("access-policy", "sidecar~stats-0", '"rules_stat_prefix": "access_"', True),
    ("access-policy", "sidecar~stats-0", "/ns/interstate-system/sa/ingress", True),
    ("access-policy", "sidecar~stats-0", '"exact": "HEAD"', True),
    ("inject-disabled", "sidecar~results-0", "outbound|legacy", True),
    ("inject-disabled", "sidecar~results-0", '"sni": "legacy"', False),
    ("custom-policy-header", "sidecar~results-0", '"key": "x-fec-policy-id"', True),
    ("custom-policy-header", "ingress~ingress", '"key": "x-fec-policy-id"', True),
    ("gateway-routes", "ingress~ingress", '"prefix": "/results/live/"', True),
    ("gateway-routes", "ingress~ingress", '"path_separated_prefix": "/api/v1/results"', True),
    ("no-default-policy", "ingress~ingress", "request_headers_to_add", False),
    ("no-default-policy", "sidecar~results-0", "request_headers_to_add", True),
    ("everything", "sidecar~results-0", '"cluster_name": "outbound|audit", "endpoints": [{}]', True),
    ("everything", "sidecar~stats-0", "envoy.filters.listener.tls_inspector", False),
    ("odd-but-valid-names", "sidecar~stats-0", r"^/v1\\.0/\\(x\\)\\[y\\]\\{z\\}\\|a\\+b\\*\\^\\$", True),
    ("odd-but-valid-names", "ingress~ingress", '"path_separated_prefix": "/r%C3%A9sultats"', True),
]


@pytest.mark.parametrize(("variant", "node_id", "text", "present"), COVERAGE)
def test_the_variant_exercises_what_it_is_named_for(
    variant: str, node_id: str, text: str, present: bool, authority: Authority
) -> None:
    [proxy] = [p for p in proxies(mesh_config(variant)) if p.node_id == node_id]
    config = json.dumps(static_config(compile_case(Case(variant, proxy, mtls=True), authority), proxy))

    assert (text in config) is present, f"{variant} {node_id}: {text!r} {'missing' if present else 'present'}"


@pytest.mark.parametrize("xds_tls", [False, True], ids=["plain", "mtls"])
def test_envoy_accepts_the_bootstrap(xds_tls: bool, envoy: Path, authority: Authority, tmp_path: Path) -> None:
    """The static part each Envoy starts with (compile/bootstrap.py), with its xDS mTLS files."""
    tls = None
    if xds_tls:
        issued = authority.issue(spiffe.workload_id("interstate.local", "results"), timedelta(hours=1), utcnow())
        files = {"crt": issued.chain_pem, "key": issued.key_pem, "ca": authority.bundle_pem}
        for suffix, text in files.items():
            (tmp_path / f"proxy.{suffix}").write_text(text)
        sds = tmp_path / "proxy.xds-client.json"
        sds.write_text(
            json.dumps(bootstrap.xds_client_secret(str(tmp_path / "proxy.crt"), str(tmp_path / "proxy.key")))
        )
        tls = XdsTls(str(sds), str(tmp_path / "proxy.ca"), spiffe.system_id("interstate.local", "control-plane"))
    config = bootstrap.build(
        "sidecar~results-0",
        "results",
        0,
        "127.0.0.1",
        15000,
        tls,
        outlier_event_log=str(tmp_path / "outlier.log"),
        joined_headers=("x-policy-ctx",),
    )

    result = envoy_static.validate(envoy, config, tmp_path / "bootstrap.json")

    assert result.ok, result.describe()


# ---- the harness is not vacuous ------------------------------------------------------------


def _hcm(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def bad_response_flag(res: ProxyResources) -> ProxyResources:
    """The first NACK: an access log filter on a response flag Envoy does not know."""
    listeners = []
    for compiled in res.listeners:
        listener = listener_pb2.Listener()
        listener.CopyFrom(compiled)
        if listener.name == "outbound":
            manager = _hcm(listener)
            manager.access_log[0].filter.CopyFrom(
                accesslog_pb2.AccessLogFilter(response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=["XX"]))
            )
            listener.filter_chains[0].filters[0].typed_config.Pack(manager)
        listeners.append(listener)
    return dataclasses.replace(res, listeners=tuple(listeners))


def host_header(res: ProxyResources) -> ProxyResources:
    """The second NACK: a header Envoy refuses to add, in a route that arrives over RDS."""
    routes = []
    for compiled in res.routes:
        route = route_pb2.RouteConfiguration()
        route.CopyFrom(compiled)
        if route.name == "outbound":
            route.virtual_hosts[0].request_headers_to_add.add(header=base_pb2.HeaderValue(key="host", value="x"))
        routes.append(route)
    return dataclasses.replace(res, routes=tuple(routes))


def hostname_endpoint(res: ProxyResources) -> ProxyResources:
    """An endpoint that arrives over EDS must be an IP address."""
    endpoints = []
    for compiled in res.endpoints:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        assignment.CopyFrom(compiled)
        assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address = "stats.local"
        endpoints.append(assignment)
    return dataclasses.replace(res, endpoints=tuple(endpoints))


def broken_certificate(res: ProxyResources) -> ProxyResources:
    """A certificate that arrives over SDS must parse."""
    secrets = []
    for compiled in res.secrets:
        secret = type(compiled)()
        secret.CopyFrom(compiled)
        if secret.HasField("tls_certificate"):
            secret.tls_certificate.certificate_chain.inline_string = (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            )
        secrets.append(secret)
    return dataclasses.replace(res, secrets=tuple(secrets))


def no_secrets(res: ProxyResources) -> ProxyResources:
    """A secret the TLS contexts name but the proxy was not given."""
    return dataclasses.replace(res, secrets=())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(m, text, id=m.__name__)
        for m, text in [
            (bad_response_flag, "ResponseFlagFilterValidationError.Flags[0]: value must be in list"),
            (host_header, ":-prefixed or host headers may not be modified"),
            (hostname_endpoint, "malformed IP address: stats.local"),
            (broken_certificate, "Failed to load certificate chain"),
            (no_secrets, "Unknown static certificate validation context: ROOTCA"),
        ]
    ],
)
def test_envoy_rejects_a_broken_config_and_says_why(
    mutate: Callable[[ProxyResources], ProxyResources], message: str, envoy: Path, authority: Authority, tmp_path: Path
) -> None:
    case = Case("election-night", Proxy.sidecar("results", 0, **ports(0, 0)), mtls=True)
    good = compile_case(case, authority)
    assert envoy_static.validate(envoy, static_config(good, case.proxy), tmp_path / "good.json").ok

    result = envoy_static.validate(envoy, static_config(mutate(good), case.proxy), tmp_path / "bad.json")

    assert not result.ok, result.describe()
    assert message in result.output, result.describe()


def test_dynamic_references_left_unconverted_are_found(authority: Authority) -> None:
    """Validate mode accepts an `ads` config source it has no server for, without looking at
    the resource, so every case checks that the conversion left none."""
    case = Case("election-night", Proxy.sidecar("results", 0, **ports(0, 0)), mtls=True)
    resources = compile_case(case, authority)
    raw = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in resources.listeners]
    raw += [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in resources.clusters]

    found = envoy_static.dynamic_leftovers(raw)

    assert any(p.endswith(".rds") for p in found), found
    assert any(p.endswith(".eds_cluster_config") for p in found), found
    assert any(p.endswith(".sds_config") for p in found), found


def test_a_route_the_proxy_was_not_given_is_reported() -> None:
    case = Case("election-night", Proxy.ingress(INGRESS_PORT), mtls=False)
    resources = dataclasses.replace(compile_proxy(mesh_index(case.variant), case.proxy), routes=())

    with pytest.raises(envoy_static.NotSelfContained, match="RDS 'ingress'"):
        envoy_static.static_bootstrap(resources)
