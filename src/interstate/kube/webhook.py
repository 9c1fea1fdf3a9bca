"""The mutating admission webhook that injects side-cars, and its MutatingWebhookConfiguration.

An edge: `POST /inject` takes an admission.k8s.io/v1 AdmissionReview, calls `kube/inject.py`
for a Pod, and answers an AdmissionReview with the request's uid, `allowed`, and the patch
(`patchType: JSONPatch`, base64). Errors become answers here and nowhere else:

    not JSON, not an AdmissionReview v1, no uid/kind/object   -> HTTP 400, a plain message
    a kind other than Pod, or an operation other than CREATE  -> allowed, no patch
    a pod the injector skips (disabled, hostNetwork, ...)     -> allowed, no patch (+ warnings)
    `InjectionRefused` (an invalid annotation, a port clash)  -> allowed: false, code 400, the message
    a Pod object that is not shaped like one                  -> HTTP 400

The webhook is called only for pods in namespaces labelled `mesh.codifyhq.io/inject: enabled`
(the configuration's namespaceSelector), so `create_app` tells `inject` that the namespace is
enabled; a pod opts out with the annotation `mesh.codifyhq.io/inject: "disabled"`. A pod
annotated "enabled" in an unlabelled namespace is never sent here: label the namespace.

It is served over HTTPS only (the API server accepts nothing else), with a certificate from the
mesh CA (`serving_certificate`) whose DNS names are the webhook Service's; the configuration's
`caBundle` is that CA's bundle. Called by `interstate webhook` and the tests; calls `inject`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from interstate.ca.authority import ROOT_CERT_FILE, ROOT_KEY_FILE, Authority, Issued
from interstate.config.loader import check_document
from interstate.kube import cluster
from interstate.kube.inject import InjectionRefused, InjectSettings, inject
from interstate.model.base import API_GROUP
from interstate.model.workload import INJECT_ANNOTATION

log = logging.getLogger(__name__)

ADMISSION_API_VERSION = "admission.k8s.io/v1"
INJECT_PATH = "/inject"
VALIDATE_PATH = "/validate"  # mesh resources, checked as `interstate validate` checks a document
VALIDATING_NAME = "interstate-validate"
WEBHOOK_NAME = "inject.mesh.codifyhq.io"
CONFIGURATION_NAME = "interstate-inject"
SERVICE = "interstate-webhook"
SYSTEM_NAMESPACE = "interstate-system"
MAX_BODY = 3 * 1024 * 1024  # the API server's own limit on a request body
SERVING_CERT_TTL = timedelta(days=365)
_POD = {"group": "", "version": "v1", "kind": "Pod"}


class BadReview(ValueError):
    """The request is not an AdmissionReview we can answer; the message says what is wrong."""


# --- the protocol, pure -------------------------------------------------------------------------


def parse_review(body: bytes) -> dict[str, Any]:
    """The `request` of an admission.k8s.io/v1 AdmissionReview, checked; BadReview otherwise."""
    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadReview(f"the body is not JSON ({exc}); send an {ADMISSION_API_VERSION} AdmissionReview") from None
    if not isinstance(review, dict):
        raise BadReview(f"the body is JSON but not an object; send an {ADMISSION_API_VERSION} AdmissionReview")
    if (review.get("apiVersion"), review.get("kind")) != (ADMISSION_API_VERSION, "AdmissionReview"):
        raise BadReview(
            f"apiVersion/kind: {review.get('apiVersion')!r}/{review.get('kind')!r}; this webhook speaks "
            f"{ADMISSION_API_VERSION} AdmissionReview only (admissionReviewVersions: [v1])"
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview("request: missing; an AdmissionReview sent to a webhook carries a request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid: missing or not a string; it must be echoed in the response")
    kind = request.get("kind")
    if not isinstance(kind, dict) or not all(isinstance(kind.get(k), str) for k in ("group", "version", "kind")):
        raise BadReview("request.kind: must be an object with group, version and kind")
    if not isinstance(request.get("operation"), str):
        raise BadReview("request.operation: missing (CREATE, UPDATE, DELETE or CONNECT)")
    if request["operation"] in ("CREATE", "UPDATE") and not isinstance(request.get("object"), dict):
        raise BadReview(f"request.object: a {request['operation']} request carries the object")
    return request


def response(
    uid: str,
    *,
    patch: list[dict[str, Any]] | None = None,
    denied: str | None = None,
    warnings: tuple[str, ...] = (),
) -> dict[str, Any]:
    """An AdmissionReview answering request `uid`."""
    answer: dict[str, Any] = {"uid": uid, "allowed": denied is None}
    if denied is not None:
        answer["status"] = {"code": 400, "reason": "BadRequest", "message": denied}
    if patch:
        answer["patchType"] = "JSONPatch"
        answer["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    if warnings:
        answer["warnings"] = list(warnings)
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": answer}


def admit(request: Mapping[str, Any], settings: InjectSettings, namespace_labels: Mapping[str, str]) -> dict[str, Any]:
    """The AdmissionReview answering a checked `request` (see the module docstring)."""
    uid = str(request["uid"])
    if request["kind"] != _POD or request["operation"] != "CREATE":
        return response(uid)
    namespace = request.get("namespace") if isinstance(request.get("namespace"), str) else None
    try:
        patch, report = inject(request["object"], settings, namespace=namespace, namespace_labels=namespace_labels)
    except InjectionRefused as exc:
        log.info("denied pod in %s: %s", namespace, exc)
        return response(uid, denied=f"interstate: {exc}")
    except ValueError as exc:
        raise BadReview(f"request.object: {exc}") from None
    log.info("pod %s in %s: %s", _pod_name(request), namespace, report)
    return response(uid, patch=patch, warnings=report.warnings)


def validate(request: Mapping[str, Any]) -> dict[str, Any]:
    """The AdmissionReview answering the creation or update of a mesh resource: denied with the
    words `interstate validate` would use when the object is invalid on its own (its kind, shape
    and field rules; references to other resources are the controller's to report, in the
    object's status, since those may be created a moment later); allowed otherwise."""
    uid = str(request["uid"])
    obj = request.get("object")
    if request.get("operation") not in ("CREATE", "UPDATE") or not isinstance(obj, Mapping):
        return response(uid)
    if not str(obj.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
        return response(uid)
    issues = check_document(cluster.object_name(obj), cluster.mesh_document(obj), kubernetes=True)
    if not issues:
        return response(uid)
    message = "; ".join(str(issue) for issue in issues)
    log.info("denied %s %s: %s", obj.get("kind"), cluster.object_name(obj), message)
    return response(uid, denied=f"interstate: {message}")


def _pod_name(request: Mapping[str, Any]) -> str:
    metadata = request["object"].get("metadata") or {}
    return str(request.get("name") or metadata.get("name") or metadata.get("generateName", "") + "*")


# --- the HTTP edge --------------------------------------------------------------------------------


def create_app(settings: InjectSettings) -> Starlette:
    """The webhook: `POST /inject`, and `GET /healthz` for the kubelet."""
    selected = {INJECT_ANNOTATION: "enabled"}  # what the namespaceSelector guarantees

    async def inject_endpoint(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse(f"the body is larger than {MAX_BODY} bytes\n", status_code=413)
        try:
            return JSONResponse(admit(parse_review(body), settings, selected))
        except BadReview as exc:
            log.warning("bad admission request: %s", exc)
            return PlainTextResponse(f"bad AdmissionReview: {exc}\n", status_code=400)

    async def validate_endpoint(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse(f"the body is larger than {MAX_BODY} bytes\n", status_code=413)
        try:
            return JSONResponse(validate(parse_review(body)))
        except BadReview as exc:
            log.warning("bad admission request: %s", exc)
            return PlainTextResponse(f"bad AdmissionReview: {exc}\n", status_code=400)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(
        routes=[
            Route(INJECT_PATH, inject_endpoint, methods=["POST"]),
            Route(VALIDATE_PATH, validate_endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def server(
    settings: InjectSettings,
    *,
    cert_file: Path,
    key_file: Path,
    host: str = "0.0.0.0",
    port: int = 8443,
) -> uvicorn.Server:
    """A uvicorn server for the webhook over HTTPS (TLS 1.2 or newer, as the API server speaks).
    Run it with `server.run()`, or `server.run(sockets=[...])` on a socket bound beforehand."""
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    return uvicorn.Server(config)


def serve_with_ca(
    settings: InjectSettings, *, ca_dir: Path, host: str, port: int, now: datetime, workdir: Path
) -> uvicorn.Server:
    """A server whose certificate is issued now by the mesh CA in `ca_dir` (written to `workdir`)."""
    authority = Authority.from_files(ca_dir / ROOT_CERT_FILE, ca_dir / ROOT_KEY_FILE)
    cert_file, key_file = write_serving_files(serving_certificate(authority, now, settings.trust_domain), workdir)
    return server(settings, cert_file=cert_file, key_file=key_file, host=host, port=port)


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket (port 0: a free one), for `server(...).run(sockets=[sock])`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


# --- certificates and the configuration -----------------------------------------------------------


def service_dns_names(service: str = SERVICE, namespace: str = SYSTEM_NAMESPACE) -> tuple[str, ...]:
    """The names the API server may use for the webhook Service (it uses `<svc>.<ns>.svc`)."""
    return (service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local")


def serving_certificate(
    authority: Authority,
    now: datetime,
    trust_domain: str,
    service: str = SERVICE,
    namespace: str = SYSTEM_NAMESPACE,
) -> Issued:
    """The webhook's HTTPS certificate from the mesh CA: the Service's DNS names, and a SPIFFE ID
    outside the workload form (`.../interstate/webhook`), so no side-car takes it for a caller."""
    return authority.issue(
        f"spiffe://{trust_domain}/interstate/webhook",
        SERVING_CERT_TTL,
        now,
        common_name=f"{service}.{namespace}.svc",
        dns_names=service_dns_names(service, namespace),
    )


def write_serving_files(issued: Issued, folder: Path) -> tuple[Path, Path]:
    """(certificate chain, key) written into `folder` (key 0600), for uvicorn's ssl options."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_file, key_file = folder / "webhook.crt", folder / "webhook.key"
    cert_file.write_text(issued.chain_pem)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(issued.key_pem)
    return cert_file, key_file


def mutating_webhook_configuration(
    ca_bundle_pem: str,
    *,
    service: str = SERVICE,
    namespace: str = SYSTEM_NAMESPACE,
    port: int = 443,
    timeout_s: int = 10,
) -> dict[str, Any]:
    """The admissionregistration.k8s.io/v1 MutatingWebhookConfiguration that sends pod creations
    in namespaces labelled `mesh.codifyhq.io/inject: enabled` to the webhook Service."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION_NAME, "labels": {"app.kubernetes.io/part-of": "interstate"}},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",  # a pod that asked for the mesh never starts without it
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": timeout_s,
                "clientConfig": {
                    "service": {"name": service, "namespace": namespace, "path": INJECT_PATH, "port": port},
                    "caBundle": base64.b64encode(ca_bundle_pem.encode()).decode(),
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {INJECT_ANNOTATION: "enabled"}},
                # Pods carrying our status annotation were injected already; labels cannot say so,
                # so `inject` checks `mesh.codifyhq.io/injected` itself.
            }
        ],
    }


def validating_webhook_configuration(
    ca_bundle_pem: str,
    *,
    service: str = SERVICE,
    namespace: str = SYSTEM_NAMESPACE,
    port: int = 443,
    url: str | None = None,
    timeout_s: int = 10,
) -> dict[str, Any]:
    """The admissionregistration.k8s.io/v1 ValidatingWebhookConfiguration that sends every
    creation and update of a mesh resource to the webhook (`validate`); `url` instead of the
    Service for a webhook outside the cluster (tests). `failurePolicy: Fail`: with the webhook
    down, mesh resources cannot change (pods are not affected)."""
    client: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle_pem.encode()).decode()}
    if url is not None:
        client["url"] = url
    else:
        client["service"] = {"name": service, "namespace": namespace, "path": VALIDATE_PATH, "port": port}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_NAME, "labels": {"app.kubernetes.io/part-of": "interstate"}},
        "webhooks": [
            {
                "name": f"validate.{API_GROUP}",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": timeout_s,
                "clientConfig": client,
                "rules": [
                    {
                        "operations": ["CREATE", "UPDATE"],
                        "apiGroups": [API_GROUP],
                        "apiVersions": ["*"],
                        "resources": ["*"],
                        "scope": "*",
                    }
                ],
            }
        ],
    }


def decode_patch(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch inside an AdmissionReview response ([] when there is none)."""
    encoded = answer["response"].get("patch")
    if encoded is None:
        return []
    try:
        patch: list[dict[str, Any]] = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"response.patch: not base64 JSON ({exc})") from None
    return patch
