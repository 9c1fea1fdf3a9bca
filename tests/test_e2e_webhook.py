"""The injection webhook over real HTTPS on 127.0.0.1, as the API server would call it.

There is no kube-apiserver here. The webhook runs in uvicorn with a certificate from our CA
(issued for the webhook Service's DNS names), and the test plays the API server: it POSTs the
AdmissionReviews of tests/fixtures/admission/ with httpx, verifying the server's certificate
against our CA under the Service's name (`interstate-webhook.interstate-system.svc`, sent as
SNI, as the API server does), decodes the base64 JSON patch, applies it with `jsonpatch` and
checks the Pod with kubernetes-validate. The MutatingWebhookConfiguration is checked against
Kubernetes' schema; the `interstate webhook` command is started once as a real process.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509

from interstate.ca.authority import Authority, utcnow
from interstate.cli import main
from interstate.kube import inject, webhook
from interstate.kube.inject import InjectSettings

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).parent / "fixtures" / "admission"
KUBERNETES = "1.37.0"
SERVICE_HOST = "interstate-webhook.interstate-system.svc"  # what the API server dials
TRUST_DOMAIN = "fec.gov.local"


@dataclass(frozen=True)
class Running:
    url: str
    authority: Authority
    settings: InjectSettings
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("webhook")
    authority = Authority.create(TRUST_DOMAIN, utcnow())
    issued = webhook.serving_certificate(authority, utcnow(), TRUST_DOMAIN)
    cert_file, key_file = webhook.write_serving_files(issued, folder / "tls")
    settings = InjectSettings(ca_bundle_pem=authority.bundle_pem, trust_domain=TRUST_DOMAIN)
    server = webhook.server(settings, cert_file=cert_file, key_file=key_file, host="127.0.0.1", port=0)
    sock = webhook.bound_socket()
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="webhook", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the webhook did not start"
            time.sleep(0.02)
        yield Running(f"https://127.0.0.1:{port}", authority, settings, cert_file, key_file)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def trusting(bundle_pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=bundle_pem)


def post(running: Running, body: bytes | dict[str, Any], path: str = "/inject") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(verify=trusting(running.authority.bundle_pem), timeout=10) as client:
        return client.post(
            running.url + path,
            content=content,
            headers={"content-type": "application/json"},
            extensions={"sni_hostname": SERVICE_HOST},
        )


def review(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def answer_to(running: Running, request: dict[str, Any]) -> dict[str, Any]:
    reply = post(running, request)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    assert (answer["apiVersion"], answer["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    assert answer["response"]["uid"] == request["request"]["uid"]  # echoed
    return answer


# --- pods in, patches out -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["results-pod", "stats-pod"])
def test_a_pod_asking_for_the_mesh_is_patched_into_a_valid_injected_pod(running: Running, fixture: str) -> None:
    request = review(fixture)
    pod = request["request"]["object"]

    answer = answer_to(running, request)

    response = answer["response"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"], validate=True))
    assert patch == webhook.decode_patch(answer)
    # The same patch as the pure function's for a pod of a labelled namespace.
    assert patch == inject.inject(pod, running.settings, namespace="elections", namespace_labels=webhook_selected())[0]
    result = jsonpatch.apply_patch(pod, patch)
    kubernetes_validate.validate(result, KUBERNETES, strict=True)
    assert "interstate-proxy" in [c["name"] for c in result["spec"]["initContainers"]]
    assert result["metadata"]["annotations"]["mesh.codifyhq.io/injected"] == running.settings.version
    assert [c["name"] for c in result["spec"]["containers"]] == [c["name"] for c in pod["spec"]["containers"]]
    for container in result["spec"]["containers"]:
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names))
        assert {"HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"} <= set(names)


def webhook_selected() -> dict[str, str]:
    return {"mesh.codifyhq.io/inject": "enabled"}


def test_the_injected_pod_sent_again_is_left_alone(running: Running) -> None:
    request = review("results-pod")
    first = answer_to(running, request)
    again = copy.deepcopy(request)
    again["request"]["uid"] = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    again["request"]["object"] = jsonpatch.apply_patch(request["request"]["object"], webhook.decode_patch(first))

    answer = answer_to(running, again)

    assert answer["response"] == {"uid": again["request"]["uid"], "allowed": True}


@pytest.mark.parametrize("fixture", ["disabled-pod", "host-network-pod", "configmap"])
def test_pods_that_stay_out_and_other_kinds_are_allowed_unchanged(running: Running, fixture: str) -> None:
    request = review(fixture)

    answer = answer_to(running, request)

    assert answer["response"] == {"uid": request["request"]["uid"], "allowed": True}


def test_a_pod_with_no_service_label_is_allowed_with_a_warning(running: Running) -> None:
    request = review("results-pod")
    del request["request"]["object"]["metadata"]["labels"]["app"]

    response = answer_to(running, request)["response"]

    assert response["allowed"] is True and "patch" not in response
    (warning,) = response["warnings"]
    assert warning.startswith("interstate: pod has no 'app' or 'app.kubernetes.io/name' label")


def test_an_invalid_policy_is_denied_with_the_field_and_the_fix(running: Running) -> None:
    request = review("results-pod")
    request["request"]["object"]["metadata"]["annotations"]["mesh.codifyhq.io/policy"] = "FEC F101"

    response = answer_to(running, request)["response"]

    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith(
        "interstate: metadata.annotations.mesh.codifyhq.io/policy: 'FEC F101' is not a valid policy ID; "
        "use letters, digits"
    )


# --- malformed requests ----------------------------------------------------------------------------


def malformed() -> list[tuple[str, bytes | dict[str, Any], str]]:
    good = review("results-pod")
    beta = copy.deepcopy(good)
    beta["apiVersion"] = "admission.k8s.io/v1beta1"
    no_uid = copy.deepcopy(good)
    del no_uid["request"]["uid"]
    no_object = copy.deepcopy(good)
    del no_object["request"]["object"]
    no_containers = copy.deepcopy(good)
    no_containers["request"]["object"]["spec"]["containers"] = []
    return [
        ("not JSON", b"<AdmissionReview/>", "bad AdmissionReview: the body is not JSON"),
        ("a list", b"[]", "bad AdmissionReview: the body is JSON but not an object"),
        ("v1beta1", beta, "this webhook speaks admission.k8s.io/v1 AdmissionReview only"),
        ("no uid", no_uid, "request.uid: missing or not a string; it must be echoed in the response"),
        ("no object", no_object, "request.object: a CREATE request carries the object"),
        ("no containers", no_containers, "request.object: spec.containers: a Pod needs a non-empty list"),
    ]


@pytest.mark.parametrize(("case", "body", "says"), malformed(), ids=[m[0] for m in malformed()])
def test_malformed_requests_get_400_with_a_clear_message(
    running: Running, case: str, body: bytes | dict[str, Any], says: str
) -> None:
    reply = post(running, body)

    assert reply.status_code == 400, case
    assert says in reply.text, reply.text


def test_only_post_inject_and_healthz_are_served(running: Running) -> None:
    with httpx.Client(verify=trusting(running.authority.bundle_pem), timeout=10) as client:
        get = client.get(running.url + "/inject", extensions={"sni_hostname": SERVICE_HOST})
        health = client.get(running.url + "/healthz", extensions={"sni_hostname": SERVICE_HOST})
    assert get.status_code == 405
    assert (health.status_code, health.text) == (200, "ok\n")
    assert post(running, review("results-pod"), path="/mutate").status_code == 404


# --- TLS ---------------------------------------------------------------------------------------------


def test_the_certificate_is_our_cas_for_the_service_name_only(running: Running) -> None:
    other = Authority.create("elsewhere.local", utcnow())
    with httpx.Client(verify=trusting(other.bundle_pem), timeout=10) as stranger:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            stranger.post(running.url + "/inject", json={}, extensions={"sni_hostname": SERVICE_HOST})
    with httpx.Client(verify=trusting(running.authority.bundle_pem), timeout=10) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.post(running.url + "/inject", json={}, extensions={"sni_hostname": "api.elsewhere.svc"})
    with pytest.raises(httpx.HTTPError):
        httpx.post(running.url.replace("https", "http") + "/inject", json={}, timeout=5)


# --- the configuration and the command ---------------------------------------------------------------


def test_the_mutating_webhook_configuration(tmp_path: Path) -> None:
    authority = Authority.create(TRUST_DOMAIN, utcnow())
    (tmp_path / "ca.pem").write_text(authority.bundle_pem)

    result = CliRunner().invoke(main, ["manifests", "webhook", "--ca-bundle", str(tmp_path / "ca.pem")])

    assert result.exit_code == 0, result.output
    (config, validating) = yaml.safe_load_all(result.stdout)
    kubernetes_validate.validate(config, KUBERNETES, strict=True)
    kubernetes_validate.validate(validating, KUBERNETES, strict=True)
    (check,) = validating["webhooks"]
    assert check["failurePolicy"] == "Fail" and check["clientConfig"]["service"]["path"] == "/validate"
    assert check["rules"][0]["apiGroups"] == ["mesh.codifyhq.io"] and check["rules"][0]["operations"] == [
        "CREATE",
        "UPDATE",
    ]
    (hook,) = config["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert (hook["sideEffects"], hook["failurePolicy"]) == ("None", "Fail")
    assert hook["namespaceSelector"] == {"matchLabels": {"mesh.codifyhq.io/inject": "enabled"}}
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    service = hook["clientConfig"]["service"]
    assert (service["name"], service["namespace"], service["path"]) == (
        "interstate-webhook",
        "interstate-system",
        "/inject",
    )
    assert base64.b64decode(hook["clientConfig"]["caBundle"]).decode() == authority.bundle_pem
    # The certificate the webhook serves carries the name the API server dials.
    issued = webhook.serving_certificate(authority, utcnow(), TRUST_DOMAIN)
    names = x509.load_pem_x509_certificate(issued.cert_pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert f"{service['name']}.{service['namespace']}.svc" in names.value.get_values_for_type(x509.DNSName)
    assert names.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://fec.gov.local/interstate/webhook"  # not of the workload form: no side-car takes it for a caller
    ]

    bad = copy.deepcopy(config)
    bad["webhooks"][0]["timeoutSeconds"] = "10"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)
    missing = CliRunner().invoke(main, ["manifests", "webhook", "--ca-bundle", str(tmp_path / "nope.pem")])
    assert missing.exit_code == 2 and "--ca-bundle: no file" in missing.stderr


def test_the_webhook_command_serves_with_a_certificate_from_the_ca_dir(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    authority = Authority.load_or_create(ca_dir, TRUST_DOMAIN, utcnow())
    sock = webhook.bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    log = (tmp_path / "webhook.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "interstate.cli",
            "webhook",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ca-dir",
            str(ca_dir),
            "--trust-domain",
            TRUST_DOMAIN,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        running = Running(f"https://127.0.0.1:{port}", authority, InjectSettings(authority.bundle_pem), ca_dir, ca_dir)
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = answer_to(running, review("results-pod"))
                break
            except httpx.ConnectError:
                assert process.poll() is None, (tmp_path / "webhook.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "webhook.log").read_text()
                time.sleep(0.1)
        assert answer["response"]["allowed"] is True and webhook.decode_patch(answer)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
