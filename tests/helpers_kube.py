"""A fake kube-apiserver for tests: real HTTPS (uvicorn, a certificate from a throw-away mesh CA
for `localhost`) speaking Kubernetes' list/watch JSON protocol from fixtures.

What it implements, as the API server does: `GET <collection>` lists (`items` with the list's
`metadata.resourceVersion`, paged with `limit`/`continue`); `?watch=1&resourceVersion=RV` replays
every event after RV and then streams new ones, one JSON object per line (chunked); a watch from a
compacted RV gets `410 Gone`, as an HTTP status or as an `ERROR` event (`compact(..., as_event=)`);
requests without the bearer token get 401. Built-in kinds' list items carry no apiVersion/kind.
`POST /apis/authentication.k8s.io/v1/tokenreviews` answers TokenReviews (201, the spec echoed
back as the API server does) for the service-account tokens the test defines in `tokens`: bound
to a pod (`user.extra["authentication.kubernetes.io/pod-name"]`) or not, valid for some audiences;
any other token, or one for other audiences, is not authenticated, with the API server's error.

`injected_pod` is a pod as the webhook admits it (the real `inject` patch applied) and scheduled;
`injected_envoy` runs an injected pod's `interstate-proxy` container as the kubelet would: a real
Envoy with the pod's own arguments. `TokenAdsClient` is a scripted ADS stream that sends a bearer
token as the side-car does. Used by tests/test_kube_watch.py, tests/test_kube_tokenreview.py,
tests/test_kube_identity.py and tests/test_e2e_kube_controller.py; everything is stopped in a
finally.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jsonpatch
import uvicorn
from helpers_xds import AdsClient, EnvoyProcess, running_envoy
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from interstate.ca.authority import Authority, utcnow
from interstate.core.identity import XDS_SERVER_NAME
from interstate.kube import inject, webhook
from interstate.kube.inject import PROXY_CONTAINER, InjectSettings
from interstate.standalone.envoy import find_envoy

TOKEN = "test-token"
REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # the API server's own
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class ServiceAccountToken:
    """What the fake API server knows of one token it issued."""

    namespace: str
    service_account: str
    pod: str | None  # a projected token is bound to its pod; a legacy secret token to none
    audiences: tuple[str, ...] = ("interstate-xds",)


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class Collection:
    items: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (rv, event)
    compacted: int = 0  # a watch from an RV below this is too old
    gone_as_event: bool = False
    streams: list[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=list)


@dataclass
class Seen:
    path: str
    params: dict[str, str]
    authorization: str


class FakeApiServer:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.rv = 1000
        self.collections: dict[str, Collection] = {}
        self.requests: list[Seen] = []
        self.gone = 0  # watches answered 410 Gone
        self.tokens: dict[str, ServiceAccountToken] = {}  # the tokens TokenReview vouches for
        self.token_reviews: list[dict[str, Any]] = []  # every TokenReview request body
        self.url = ""
        self.ca_file: Path | None = None
        self._server: uvicorn.Server | None = None

    # ---- the test's side ---------------------------------------------------------------------
    def collection(self, path: str) -> Collection:
        return self.collections.setdefault(path, Collection())

    def load(self, path: str, list_file: Path) -> None:
        """Objects of a list fixture (as `kubectl get -o json` gives) into a collection."""
        for item in json.loads(list_file.read_text())["items"]:
            self.put(path, item)

    def put(self, path: str, obj: dict[str, Any]) -> None:
        """Create or replace without an event (the state before anyone watches)."""
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.collection(path).items[_key(obj)] = obj

    def emit(self, path: str, kind: str, obj: dict[str, Any]) -> None:
        """ADDED / MODIFIED / DELETED: change the collection and tell every watcher."""
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        col = self.collection(path)
        if kind == "DELETED":
            col.items.pop(_key(obj), None)
        else:
            col.items[_key(obj)] = obj
        self._send(path, self.rv, {"type": kind, "object": obj})

    def bookmark(self, path: str) -> None:
        self.rv += 1
        self._send(path, self.rv, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(self.rv)}}})

    def compact(self, path: str, as_event: bool = False) -> None:
        """Forget the history and end open watches (as the server's timeout would): a watch
        resumed from an older RV gets 410 Gone (HTTP status, or an ERROR event with `as_event`)."""
        col = self.collection(path)
        col.compacted, col.gone_as_event = self.rv, as_event
        col.events.clear()
        for queue in col.streams:
            queue.put_nowait(None)

    def watching(self, path: str) -> int:
        return len(self.collection(path).streams)

    def lists(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path and "watch" not in r.params)

    def _send(self, path: str, rv: int, event: dict[str, Any]) -> None:
        col = self.collection(path)
        col.events.append((rv, event))
        for queue in col.streams:
            queue.put_nowait(event)

    # ---- HTTP --------------------------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        path, params = request.url.path, dict(request.query_params)
        authorization = request.headers.get("authorization", "")
        self.requests.append(Seen(path, params, authorization))
        if authorization != f"Bearer {self.token}":
            return JSONResponse(status(401, "Unauthorized", "Unauthorized"), status_code=401)
        col = self.collection(path)
        if params.get("watch") in ("1", "true"):
            since = int(params.get("resourceVersion") or 0)
            if since < col.compacted:
                self.gone += 1
                gone = status(410, "Expired", f"too old resource version: {since} ({col.compacted})")
                if not col.gone_as_event:
                    return JSONResponse(gone, status_code=410)
                return StreamingResponse(_once({"type": "ERROR", "object": gone}), media_type="application/json")
            queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
            for rv, event in col.events:
                if rv > since:
                    queue.put_nowait(event)
            col.streams.append(queue)
            return StreamingResponse(_stream(queue, col), media_type="application/json")
        items = [col.items[k] for k in sorted(col.items)]
        start = int(params.get("continue") or 0)
        limit = int(params.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        metadata: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if start + limit < len(items):
            metadata["continue"] = str(start + limit)
        body = {"kind": "List", "apiVersion": "v1", "metadata": metadata, "items": [_untyped(i) for i in page]}
        return JSONResponse(body)

    async def _review(self, request: Request) -> Response:
        """A TokenReview, answered as the API server's token authenticator does."""
        authorization = request.headers.get("authorization", "")
        self.requests.append(Seen(request.url.path, dict(request.query_params), authorization))
        if authorization != f"Bearer {self.token}":
            return JSONResponse(status(401, "Unauthorized", "Unauthorized"), status_code=401)
        review = await request.json()
        self.token_reviews.append(review)
        if (review.get("apiVersion"), review.get("kind")) != ("authentication.k8s.io/v1", "TokenReview"):
            return JSONResponse(status(400, "BadRequest", "not an authentication.k8s.io/v1 TokenReview"), 400)
        spec = review.get("spec") or {}
        wanted = list(spec.get("audiences") or [API_AUDIENCE])
        known = self.tokens.get(str(spec.get("token", "")))
        answer: dict[str, Any]
        if known is None:
            answer = {"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}
        elif not set(known.audiences) & set(wanted):
            answer = {
                "user": {},
                "error": f"[invalid bearer token, token audiences {json.dumps(list(known.audiences))} "
                f"is invalid for the target audiences {json.dumps(wanted)}]",
            }
        else:
            extra = {}
            if known.pod is not None:
                extra = {POD_NAME_EXTRA: [known.pod], POD_UID_EXTRA: [f"uid-of-{known.pod}"]}
            answer = {
                "authenticated": True,
                "user": {
                    "username": f"system:serviceaccount:{known.namespace}:{known.service_account}",
                    "uid": f"uid-of-{known.service_account}",
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{known.namespace}",
                        "system:authenticated",
                    ],
                    "extra": extra,
                },
                "audiences": [a for a in wanted if a in known.audiences],
            }
        body = {**review, "metadata": {"creationTimestamp": None}, "status": answer}
        return JSONResponse(body, status_code=201)

    async def start(self, workdir: Path) -> None:
        authority = Authority.create("interstate.local", utcnow())
        issued = authority.issue(
            "spiffe://interstate.local/kube-apiserver",
            webhook.SERVING_CERT_TTL,
            utcnow(),
            common_name="localhost",
            dns_names=("localhost",),
        )
        cert_file, key_file = webhook.write_serving_files(issued, workdir / "apiserver-tls")
        self.ca_file = workdir / "apiserver-ca.crt"
        self.ca_file.write_text(authority.bundle_pem)
        app = Starlette(
            routes=[
                Route(REVIEWS, self._review, methods=["POST"]),
                Route("/{path:path}", self._handle, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(
            app,
            ssl_certfile=str(cert_file),
            ssl_keyfile=str(key_file),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):
            if self._server.started:
                break
            await asyncio.sleep(0.01)
        assert self._server.started, "the fake API server did not start"
        self.url = f"https://localhost:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        for col in self.collections.values():
            for queue in col.streams:
                queue.put_nowait(None)
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
            self._sock.close()
            self._server = None


@contextlib.asynccontextmanager
async def fake_apiserver(workdir: Path, token: str = TOKEN) -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(token)
    try:
        await server.start(workdir)
        yield server
    finally:
        await server.stop()


async def _once(event: dict[str, Any]) -> AsyncIterator[bytes]:
    yield json.dumps(event).encode() + b"\n"


async def _stream(queue: asyncio.Queue[dict[str, Any] | None], col: Collection) -> AsyncIterator[bytes]:
    try:
        while True:
            event = await queue.get()
            if event is None:
                return
            yield json.dumps(event).encode() + b"\n"
    finally:
        col.streams.remove(queue)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _untyped(obj: dict[str, Any]) -> dict[str, Any]:
    """Built-in kinds' list items come without apiVersion/kind; custom resources keep them."""
    if str(obj.get("apiVersion", "")).startswith("mesh.codifyhq.io/"):
        return obj
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


# ---- an injected pod's side-car, run as the kubelet would --------------------------------------


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of container arguments: $(VAR) from the env, $$ is a literal $."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and text.find(")", i) > 0:
            end = text.index(")", i)
            out.append(env.get(text[i + 2 : end], text[i : end + 1]))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def proxy_container(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    (proxy,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == PROXY_CONTAINER]
    found: dict[str, Any] = proxy
    return found


@contextlib.asynccontextmanager
async def injected_envoy(
    workdir: Path, pod: dict[str, Any], token_file: Path | None, name: str = "", ready_timeout: float = 20.0
) -> AsyncIterator[EnvoyProcess]:
    """A real Envoy from an injected pod's `interstate-proxy` arguments, after the kubelet's
    `$(VAR)` expansion with the downward API's POD_NAME/POD_NAMESPACE. What a kubelet would
    provide differently here: the projected token is `token_file` (None: the token plugin is
    removed, a side-car that sends no token), and the ready listener binds the pod IP rather than
    every address. Yields once the admin interface answers (not /ready: a refused side-car never
    gets there); terminated (then killed) on the way out, whatever happened."""
    metadata = pod["metadata"]
    env = {"POD_NAME": metadata["name"], "POD_NAMESPACE": metadata["namespace"]}
    args = [kubelet_expand(a, env) for a in proxy_container(pod)["args"]]
    at = args.index("--config-yaml") + 1
    config = json.loads(args[at])
    google = config["dynamic_resources"]["ads_config"]["grpc_services"][0]["google_grpc"]
    if token_file is None:
        del google["call_credentials"]
    else:
        google["call_credentials"][0]["from_plugin"]["typed_config"]["secret_data"]["filename"] = str(token_file)
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = pod["status"]["podIP"]
    args[at] = json.dumps(config)
    admin_port = int(config["admin"]["address"]["socket_address"]["port_value"])
    stem = name or metadata["name"]
    argv = [str(find_envoy()), *args]
    async with running_envoy(argv, admin_port, workdir / f"envoy-{stem}.log", stem, "/server_info", ready_timeout) as p:
        yield p


def injected_pod(
    name: str,
    service: str,
    settings: InjectSettings,
    *,
    namespace: str,
    service_account: str,
    pod_ip: str,
    app_port: int,
) -> dict[str, Any]:
    """A Deployment's pod (labelled `app: <service>`, running as `service_account`) as the
    webhook admits it (the real `inject` patch applied), then scheduled with `pod_ip`."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": service}},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [
                {
                    "name": service,
                    "image": "registry.example.invalid/app:1",
                    "ports": [{"name": "http", "containerPort": app_port, "protocol": "TCP"}],
                }
            ],
        },
    }
    enabled = {inject.INJECT_ANNOTATION: "enabled"}
    patch, report = inject.inject(pod, settings, namespace=namespace, namespace_labels=enabled)
    assert report.injected, report
    pod = jsonpatch.apply_patch(pod, patch)
    pod["status"] = {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}
    return pod


class TokenAdsClient(AdsClient):
    """helpers_xds' scripted ADS stream over TLS (server certificate only), with a bearer token
    sent on every call as the side-car's token plugin does (None: no token)."""

    bundle_pem: str = ""
    token: str | None = None

    def open_channel(self) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.bundle_pem.encode())
        if self.token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token)
            )
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}", credentials, options=[("grpc.ssl_target_name_override", XDS_SERVER_NAME)]
        )
