"""Side-car injection (kube/inject.py, kube/bootstrap.py): a Pod in, a JSON patch and a report out.

There is no kube-apiserver here. The patches are applied with `jsonpatch` (RFC 6902, as the API
server applies them) to the pods of tests/fixtures/admission/ (AdmissionReview requests as the
API server sends them), and the resulting Pods are checked with kubernetes-validate against
Kubernetes' own schema (strict). The side-car's arguments are handed, after the expansion of
`$(VAR)` the kubelet does, to the real Envoy: `--mode validate`, and once for real against a
stand-in ADS server over TLS with a certificate from our CA, which checks what the control plane
will rely on (the bearer token, the node ID from the downward API, the policy, /ready).
"""

from __future__ import annotations

import copy
import json
import queue
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import jsonpatch
import kubernetes_validate
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from helpers_kube import kubelet_expand

from interstate.ca import spiffe
from interstate.ca.authority import Authority, utcnow
from interstate.kube import bootstrap, inject
from interstate.kube.inject import InjectionRefused, InjectSettings
from interstate.standalone.envoy import find_envoy

FIXTURES = Path(__file__).parent / "fixtures" / "admission"
KUBERNETES = "1.37.0"
ENABLED = {"mesh.codifyhq.io/inject": "enabled"}  # the namespace label


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.create("fec.gov.local", utcnow())


@pytest.fixture(scope="module")
def settings(authority: Authority) -> InjectSettings:
    return InjectSettings(ca_bundle_pem=authority.bundle_pem, trust_domain="fec.gov.local")


def fixture_pod(name: str) -> dict[str, Any]:
    review = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    pod: dict[str, Any] = review["request"]["object"]
    return pod


def injected(pod: dict[str, Any], settings: InjectSettings, **options: Any) -> tuple[dict[str, Any], inject.Report]:
    patch, report = inject.inject(pod, settings, namespace="elections", namespace_labels=ENABLED, **options)
    return jsonpatch.apply_patch(pod, patch), report


def validate_pod(pod: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)


def proxy_of(pod: dict[str, Any]) -> dict[str, Any]:
    (proxy,) = [
        c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"] if c["name"] == "interstate-proxy"
    ]
    return proxy


def bootstrap_of(proxy: dict[str, Any]) -> dict[str, Any]:
    args = proxy["args"]
    config: dict[str, Any] = json.loads(args[args.index("--config-yaml") + 1].replace("$$", "$"))
    return config


def env_of(container: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(e["name"], e.get("value", e.get("valueFrom"))) for e in container.get("env", [])]


# --- the chapter's pod ----------------------------------------------------------------------------


def test_the_chapters_pod_gets_a_side_car_and_stays_a_valid_pod(settings: InjectSettings) -> None:
    pod = fixture_pod("results-pod")
    validate_pod(pod)  # the fixture itself is a valid Pod

    result, report = injected(pod, settings)

    validate_pod(result)
    assert report.injected and report.service == "results"
    assert [c["name"] for c in result["spec"]["containers"]] == ["app"]  # untouched, in order
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["interstate-proxy"]
    assert result["metadata"]["annotations"] == {
        "mesh.codifyhq.io/inject": "enabled",
        "mesh.codifyhq.io/policy": "FEC-F101",
        "mesh.codifyhq.io/injected": settings.version,
    }
    assert env_of(result["spec"]["containers"][0]) == [
        ("HTTP_PROXY", "http://127.0.0.1:15001"),
        ("http_proxy", "http://127.0.0.1:15001"),
        ("NO_PROXY", "localhost,127.0.0.1"),
        ("no_proxy", "localhost,127.0.0.1"),
    ]
    assert "injected: pod says" in str(report) and "policy FEC-F101" in str(report)


def test_the_side_car_container(settings: InjectSettings) -> None:
    result, _ = injected(fixture_pod("results-pod"), settings)
    proxy = proxy_of(result)

    assert proxy["image"] == settings.proxy_image
    assert proxy["command"] == ["envoy"]
    assert proxy["restartPolicy"] == "Always"  # a native side-car: started and ready before the app
    ready = {"path": "/ready", "port": 15021, "scheme": "HTTP"}
    assert proxy["readinessProbe"]["httpGet"] == ready
    assert proxy["startupProbe"]["httpGet"] == ready
    # limits too: a namespace with a `limits.*` ResourceQuota refuses a container without them
    assert proxy["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert proxy["securityContext"]["runAsNonRoot"] and proxy["securityContext"]["readOnlyRootFilesystem"]
    assert {(p["name"], p["containerPort"]) for p in proxy["ports"]} == {("mesh-inbound", 15006), ("mesh-ready", 15021)}
    args = proxy["args"]
    assert args[args.index("--service-node") + 1] == "sidecar~$(POD_NAME).$(POD_NAMESPACE)"
    assert args[args.index("--service-cluster") + 1] == "results"
    assert [e["name"] for e in proxy["env"]] == ["POD_NAME", "POD_NAMESPACE"]
    # The only volume added is the projected token: certificates come over SDS, no secret is mounted.
    added = [v for v in result["spec"]["volumes"] if not v["name"].startswith("kube-api-access-")]
    assert added == [
        {
            "name": "interstate-xds-token",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"audience": "interstate-xds", "expirationSeconds": 3600, "path": "token"}}
                ]
            },
        }
    ]
    assert proxy["volumeMounts"] == [
        {"name": "interstate-xds-token", "mountPath": "/var/run/secrets/interstate/xds", "readOnly": True}
    ]


def test_the_bootstrap_carries_the_policy_and_authenticates_with_the_token(settings: InjectSettings) -> None:
    result, _ = injected(fixture_pod("results-pod"), settings)
    config = bootstrap_of(proxy_of(result))

    assert config["node"]["metadata"] == {
        "namespace": "elections",
        "service": "results",
        "serviceAccount": "default",
        "identity": "spiffe://fec.gov.local/ns/elections/sa/default",
        "injector": settings.version,
        "policy": "FEC-F101",
    }
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    (grpc_service,) = config["dynamic_resources"]["ads_config"]["grpc_services"]
    google = grpc_service["google_grpc"]
    assert google["target_uri"] == "interstate-xds.interstate-system.svc:15012"
    assert google["channel_credentials"]["ssl_credentials"]["root_certs"]["inline_string"] == settings.ca_bundle_pem
    (token,) = google["call_credentials"]
    assert token["from_plugin"]["typed_config"]["secret_data"] == {"filename": "/var/run/secrets/interstate/xds/token"}
    assert config["inline_headers"] == [{"inline_header_name": "x-policy-ctx", "inline_header_type": "REQUEST_HEADER"}]
    assert "tls_certificates" not in json.dumps(config)  # no bootstrap certificate in a pod


# --- re-injection, order, env -----------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_injection_is_idempotent(settings: InjectSettings, native: bool) -> None:
    options = InjectSettings(ca_bundle_pem=settings.ca_bundle_pem, native_sidecar=native)
    once, _ = injected(fixture_pod("stats-pod"), options)

    patch, report = inject.inject(once, options, namespace="elections", namespace_labels=ENABLED)

    assert patch == []
    assert str(report) == f"not injected: already injected (mesh.codifyhq.io/injected: {options.version})"
    without_annotation = copy.deepcopy(once)
    del without_annotation["metadata"]["annotations"]["mesh.codifyhq.io/injected"]
    assert inject.inject(without_annotation, options, namespace_labels=ENABLED)[0] == []


@pytest.mark.parametrize("native", [True, False])
def test_containers_keep_their_order(settings: InjectSettings, native: bool) -> None:
    options = InjectSettings(ca_bundle_pem=settings.ca_bundle_pem, native_sidecar=native)

    result, _ = injected(fixture_pod("stats-pod"), options)

    validate_pod(result)
    names = [c["name"] for c in result["spec"]["containers"]]
    inits = [c["name"] for c in result["spec"]["initContainers"]]
    if native:
        # the side-car first, as Istio's: the pod's own init containers then run in the mesh
        assert (names, inits) == (["stats", "log-shipper"], ["interstate-proxy", "migrate"])
    else:
        assert (names, inits) == (["stats", "log-shipper", "interstate-proxy"], ["migrate"])
        assert "startupProbe" not in proxy_of(result) and "restartPolicy" not in proxy_of(result)


def test_env_is_merged_not_duplicated(settings: InjectSettings) -> None:
    result, report = injected(fixture_pod("stats-pod"), settings)

    stats, shipper = result["spec"]["containers"]
    assert env_of(stats) == [
        ("LOG_LEVEL", "info"),
        ("HTTP_PROXY", "http://127.0.0.1:15001"),  # replaced in place
        ("NO_PROXY", "localhost,127.0.0.1,.agency.internal"),  # ours first, theirs kept, once each
        ("DB_HOST", {"configMapKeyRef": {"name": "stats-db", "key": "host"}}),
        ("http_proxy", "http://127.0.0.1:15001"),
        ("no_proxy", "localhost,127.0.0.1"),
    ]
    assert [n for n, _ in env_of(shipper)] == ["HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"]
    side_car, migrate = result["spec"]["initContainers"]
    assert (side_car["name"], migrate["name"]) == ("interstate-proxy", "migrate")
    # the pod's init containers start after the native side-car, so they reach the mesh through it too
    assert ("HTTP_PROXY", "http://127.0.0.1:15001") in env_of(migrate)
    assert report.warnings == (
        "interstate: container stats set HTTP_PROXY=http://proxy.agency.internal:3128; "
        "the mesh replaces it with its side-car (http://127.0.0.1:15001)",
    )


def test_the_namespace_label_enables_pods_without_the_annotation(settings: InjectSettings) -> None:
    pod = fixture_pod("stats-pod")
    assert "mesh.codifyhq.io/inject" not in pod["metadata"]["annotations"]

    in_labelled, report = inject.inject(pod, settings, namespace_labels=ENABLED)
    elsewhere, why = inject.inject(pod, settings, namespace_labels={})

    assert in_labelled and report.reasons[0] == 'namespace says mesh.codifyhq.io/inject: "enabled"'
    assert bootstrap_of(proxy_of(jsonpatch.apply_patch(pod, in_labelled)))["node"]["metadata"]["policy"] == "FEC-F202"
    assert elsewhere == []
    assert str(why) == 'not injected: neither the pod nor its namespace says mesh.codifyhq.io/inject: "enabled"'


def test_a_pod_without_annotations_or_env_gets_them_created(settings: InjectSettings) -> None:
    pod = fixture_pod("results-pod")
    del pod["metadata"]["annotations"]
    del pod["spec"]["volumes"]
    del pod["spec"]["containers"][0]["volumeMounts"]

    result, report = injected(pod, settings)

    validate_pod(result)
    assert report.injected
    assert result["metadata"]["annotations"] == {"mesh.codifyhq.io/injected": settings.version}
    assert [v["name"] for v in result["spec"]["volumes"]] == ["interstate-xds-token"]


# --- skipped and refused ----------------------------------------------------------------------------


def test_skipped_pods_get_an_empty_patch_and_a_reason(settings: InjectSettings) -> None:
    no_label = fixture_pod("results-pod")
    del no_label["metadata"]["labels"]["app"]
    windows = fixture_pod("results-pod")
    windows["spec"]["os"] = {"name": "windows"}
    cases = {
        "disabled-pod": (fixture_pod("disabled-pod"), 'the pod says mesh.codifyhq.io/inject: "disabled"'),
        "host-network": (fixture_pod("host-network-pod"), "hostNetwork pod: the side-car's ports would be the node's"),
        "windows": (windows, "Windows pod: the side-car image is Linux only"),
        "no app label": (no_label, "pod has no 'app' or 'app.kubernetes.io/name' label"),
    }
    for name, (pod, reason) in cases.items():
        patch, report = inject.inject(pod, settings, namespace_labels=ENABLED)
        assert patch == [], name
        assert not report.injected and report.reasons[0].startswith(reason), (name, report)
    assert inject.inject(no_label, settings, namespace_labels=ENABLED)[1].warnings  # the user is told


def test_the_app_name_label_is_the_second_choice(settings: InjectSettings) -> None:
    pod = fixture_pod("results-pod")
    pod["metadata"]["labels"] = {"app.kubernetes.io/name": "results-api"}

    _, report = inject.inject(pod, settings, namespace_labels=ENABLED)

    assert report.service == "results-api"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["metadata"]["annotations"].update({"mesh.codifyhq.io/inject": "yes"}),
            "metadata.annotations.mesh.codifyhq.io/inject: 'yes' is not valid; use 'enabled' or 'disabled'",
        ),
        (
            lambda p: p["metadata"]["annotations"].update({"mesh.codifyhq.io/policy": "FEC F101"}),
            "metadata.annotations.mesh.codifyhq.io/policy: 'FEC F101' is not a valid policy ID",
        ),
        (
            lambda p: p["spec"]["containers"][0].update({"ports": [{"containerPort": 15001}]}),
            "spec.containers[0].ports[0].containerPort: 15001 is the mesh side-car's",
        ),
    ],
    ids=["inject value", "policy", "port"],
)
def test_invalid_requests_are_refused_with_the_field(settings: InjectSettings, edit: Any, message: str) -> None:
    pod = fixture_pod("results-pod")
    edit(pod)

    with pytest.raises(InjectionRefused) as caught:
        inject.inject(pod, settings, namespace_labels=ENABLED)

    assert str(caught.value).startswith(message)


def test_a_pod_that_is_not_shaped_like_one_is_a_value_error(settings: InjectSettings) -> None:
    for bad, says in [
        ({"metadata": {}}, "spec: a Pod needs a spec object"),
        ({"spec": {"containers": []}}, "spec.containers: a Pod needs a non-empty list"),
        ({"spec": {"containers": [{"image": "x"}]}}, "spec.containers[0]: a container is an object with a name"),
    ]:
        with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
            inject.inject(bad, settings, namespace_labels=ENABLED)


def test_settings_are_checked_once() -> None:
    with pytest.raises(ValueError, match="not HOST:PORT"):
        InjectSettings(ca_bundle_pem="-----BEGIN CERTIFICATE-----", xds_address="interstate-xds")
    with pytest.raises(ValueError, match="not a PEM certificate bundle"):
        InjectSettings(ca_bundle_pem="")


def test_a_dollar_in_the_bootstrap_survives_the_kubelets_expansion(authority: Authority) -> None:
    settings = InjectSettings(ca_bundle_pem=authority.bundle_pem, policy_header="x-policy-ctx")
    pod = fixture_pod("results-pod")
    pod["metadata"]["labels"]["app"] = "results"
    patch, _ = inject.inject(pod, settings, namespace_labels=ENABLED)
    proxy = proxy_of(jsonpatch.apply_patch(pod, patch))
    raw = proxy["args"][proxy["args"].index("--config-yaml") + 1]

    sneaky = raw.replace('"injector":', '"note":"$(POD_NAME) costs $5","injector":')
    expanded = kubelet_expand(sneaky.replace("$", "$$"), {"POD_NAME": "x"})

    assert json.loads(expanded)["node"]["metadata"]["note"] == "$(POD_NAME) costs $5"


# --- the real Envoy ----------------------------------------------------------------------------------

POD_ENV = {"POD_NAME": "results-7c9d8b5f4-k2x8q", "POD_NAMESPACE": "elections"}


def envoy_argv(proxy: dict[str, Any], env: dict[str, str]) -> list[str]:
    return [str(find_envoy()), *(kubelet_expand(a, env) for a in proxy["args"])]


@pytest.mark.e2e
@pytest.mark.parametrize("fixture", ["results-pod", "stats-pod"])
def test_envoy_accepts_the_side_car_arguments(settings: InjectSettings, fixture: str) -> None:
    result, _ = injected(fixture_pod(fixture), settings)

    done = subprocess.run(
        [*envoy_argv(proxy_of(result), POD_ENV), "--mode", "validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "OK" in done.stdout + done.stderr


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class StandInAds:
    """Just enough of the control plane's ADS: record what a side-car presents on its stream,
    answer the first CDS and LDS requests with empty sets so Envoy finishes initializing."""

    SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

    def __init__(self) -> None:
        self.metadata: queue.Queue[dict[str, str]] = queue.Queue()
        self.nodes: queue.Queue[dict[str, Any]] = queue.Queue()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            self.SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
                )
            },
        )

    def _stream(
        self, requests: Iterator[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        self.metadata.put(dict(context.invocation_metadata()))
        for request in requests:
            if request.HasField("node"):
                self.nodes.put(json_format.MessageToDict(request.node))
            if not request.response_nonce:
                yield discovery_pb2.DiscoveryResponse(version_info="1", type_url=request.type_url, nonce="1")


@pytest.mark.e2e
def test_envoy_reaches_the_control_plane_with_its_token_and_gets_ready(authority: Authority, tmp_path: Path) -> None:
    # The control plane's certificate, as standalone mode issues it (DNS SAN xds.interstate).
    server_cert = authority.issue(
        spiffe.control_plane_id("fec.gov.local"), timedelta(hours=1), utcnow(), dns_names=("xds.interstate",)
    )
    ads = StandInAds()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    grpc_server.add_generic_rpc_handlers((ads.handler(),))
    credentials = grpc.ssl_server_credentials([(server_cert.key_pem.encode(), server_cert.chain_pem.encode())])
    xds_port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    admin, outbound, inbound, ready = free_ports(4)
    settings = InjectSettings(
        ca_bundle_pem=authority.bundle_pem,
        trust_domain="fec.gov.local",
        xds_address=f"127.0.0.1:{xds_port}",
        ports=bootstrap.ProxyPorts(admin=admin, outbound=outbound, inbound=inbound, ready=ready),
        native_sidecar=True,
    )
    result, _ = injected(fixture_pod("results-pod"), settings)
    proxy = proxy_of(result)
    # What the kubelet does: mount the projected token (here: a file), expand $(VAR)s. The ready
    # listener binds loopback here instead of every address of the pod.
    (tmp_path / "token").write_text("the-projected-token")
    config = bootstrap_of(proxy)
    google = config["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"]
    google["call_credentials"][0]["from_plugin"]["typed_config"]["secret_data"]["filename"] = str(tmp_path / "token")
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "127.0.0.1"
    args = list(proxy["args"])
    args[args.index("--config-yaml") + 1] = json.dumps(config).replace("$", "$$")
    log = (tmp_path / "envoy.log").open("w")
    envoy = subprocess.Popen(
        envoy_argv({**proxy, "args": args}, POD_ENV),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        metadata = ads.metadata.get(timeout=30)
        node = ads.nodes.get(timeout=10)
        assert metadata["authorization"] == "Bearer the-projected-token"
        assert node["id"] == "sidecar~results-7c9d8b5f4-k2x8q.elections"
        assert node["cluster"] == "results"
        assert node["metadata"]["policy"] == "FEC-F101"
        assert node["metadata"]["identity"] == "spiffe://fec.gov.local/ns/elections/sa/default"

        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{ready}/ready", timeout=1).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, (tmp_path / "envoy.log").read_text()[-3000:]
        # The probe port answers GET /ready and Prometheus' GET /stats/prometheus (the side-car's
        # request counters the KEDA ScaledObject reads); the rest of the admin stays on loopback.
        metrics = httpx.get(f"http://127.0.0.1:{ready}/stats/prometheus", timeout=2)
        assert metrics.status_code == 200 and "envoy_server_live" in metrics.text
        assert httpx.get(f"http://127.0.0.1:{ready}/config_dump", timeout=2).status_code == 404
        assert httpx.post(f"http://127.0.0.1:{ready}/ready", timeout=2).status_code == 404
    finally:
        envoy.terminate()
        try:
            envoy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait()
        log.close()
        grpc_server.stop(grace=None)


def test_the_fixtures_are_admission_reviews_of_valid_objects() -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    assert names == ["configmap", "disabled-pod", "host-network-pod", "results-pod", "stats-pod"]
    for name in names:
        review = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
        assert (review["apiVersion"], review["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
        request = review["request"]
        assert request["operation"] == "CREATE" and request["uid"]
        assert request["kind"]["kind"] == request["object"]["kind"]
        kubernetes_validate.validate(request["object"], KUBERNETES, strict=True)
