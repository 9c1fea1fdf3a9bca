"""A fake kube-apiserver for tests: real HTTPS (uvicorn, a certificate from a throw-away mesh CA
for `localhost`) speaking Kubernetes' list/watch JSON protocol from fixtures.

What it implements, as the API server does: `GET <collection>` lists (`items` with the list's
`metadata.resourceVersion`, paged with `limit`/`continue`); `?watch=1&resourceVersion=RV` replays
every event after RV and then streams new ones, one JSON object per line (chunked); a watch from a
compacted RV gets `410 Gone`, as an HTTP status or as an `ERROR` event (`compact(..., as_event=)`);
requests without the bearer token get 401. Built-in kinds' list items carry no apiVersion/kind.
Used by tests/test_kube_watch.py and tests/test_e2e_kube_controller.py; stopped in a finally.
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

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from interstate.ca.authority import Authority, utcnow
from interstate.kube import webhook

TOKEN = "test-token"


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
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET"])])
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
