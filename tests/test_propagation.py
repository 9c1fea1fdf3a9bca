"""interstate.propagation inside real servers: an ASGI app under uvicorn and a WSGI app under
wsgiref (threads), calling an upstream with httpx and with requests. The upstream records the
headers each call arrived with."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from interstate import propagation
from interstate.propagation import (
    PropagationMiddleware,
    WSGIPropagationMiddleware,
    httpx_hooks,
    propagating_session,
)


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: dict[str, dict[str, str]] = {}

    def do_GET(self) -> None:
        Recorder.seen[self.path] = {k.lower(): v for k, v in self.headers.items()}
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def asgi_app(upstream: str) -> Any:
    client = httpx.AsyncClient(event_hooks=httpx_hooks(), trust_env=False)
    session = propagating_session()
    session.trust_env = False

    async def call(request: Request) -> JSONResponse:
        key, how = request.query_params["key"], request.query_params["client"]
        headers = {"x-policy-ctx": "SET-BY-APP"} if request.query_params.get("own") else {}
        await asyncio.sleep(0.01)  # let concurrent requests interleave
        if how == "httpx":
            await client.get(f"{upstream}/{key}", headers=headers)
        else:
            await asyncio.to_thread(session.get, f"{upstream}/{key}", headers=headers, timeout=5)
        return JSONResponse({"ok": True})

    return PropagationMiddleware(Starlette(routes=[Route("/call", call)]))


def wsgi_app(upstream: str) -> Any:
    client = httpx.Client(event_hooks=httpx_hooks(asynchronous=False), trust_env=False)
    session = propagating_session()
    session.trust_env = False

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = dict(pair.split("=") for pair in environ["QUERY_STRING"].split("&"))
        time.sleep(0.01)
        if query["client"] == "httpx":
            client.get(f"{upstream}/{query['key']}")
        else:
            session.get(f"{upstream}/{query['key']}", timeout=5)
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps({"ok": True}).encode()]

    return WSGIPropagationMiddleware(app)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def asgi(upstream: str) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(asgi_app(upstream), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def wsgi(upstream: str) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, wsgi_app(upstream), server_class=ThreadingWSGIServer, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


SERVERS = ["asgi", "wsgi"]
CLIENTS = ["httpx", "requests"]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("client", CLIENTS)
def test_the_inbound_policy_and_request_id_reach_the_outbound_call(
    server: str, client: str, request: pytest.FixtureRequest
) -> None:
    base = request.getfixturevalue(server)
    key = f"{server}-{client}-carried"
    response = httpx.get(
        f"{base}/call",
        params={"key": key, "client": client},
        trust_env=False,
        headers={"x-policy-ctx": "FEC-F202", "x-request-id": f"id-{key}"},
    )
    assert response.status_code == 200
    assert Recorder.seen[f"/{key}"]["x-policy-ctx"] == "FEC-F202"
    assert Recorder.seen[f"/{key}"]["x-request-id"] == f"id-{key}"


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("client", CLIENTS)
def test_without_inbound_headers_nothing_is_added(server: str, client: str, request: pytest.FixtureRequest) -> None:
    base = request.getfixturevalue(server)
    key = f"{server}-{client}-bare"
    assert httpx.get(f"{base}/call", params={"key": key, "client": client}, trust_env=False).status_code == 200
    assert "x-policy-ctx" not in Recorder.seen[f"/{key}"]  # the side-car adds the default, not the app


@pytest.mark.parametrize("client", CLIENTS)
def test_a_header_the_app_sets_itself_wins(asgi: str, client: str) -> None:
    key = f"own-{client}"
    params = {"key": key, "client": client, "own": "1"}
    httpx.get(f"{asgi}/call", params=params, headers={"x-policy-ctx": "FEC-F202"}, trust_env=False)
    assert Recorder.seen[f"/{key}"]["x-policy-ctx"] == "SET-BY-APP"


@pytest.mark.parametrize("server", SERVERS)
def test_concurrent_requests_keep_their_own_context(server: str, request: pytest.FixtureRequest) -> None:
    base = request.getfixturevalue(server)

    def one(i: int) -> None:
        key = f"{server}-concurrent-{i}"
        client = CLIENTS[i % 2]
        response = httpx.get(
            f"{base}/call",
            params={"key": key, "client": client},
            trust_env=False,
            headers={"x-policy-ctx": f"FEC-{i:04d}"},
            timeout=10,
        )
        assert response.status_code == 200

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(40)))
    for i in range(40):
        assert Recorder.seen[f"/{server}-concurrent-{i}"]["x-policy-ctx"] == f"FEC-{i:04d}"


def test_outside_a_request_there_is_nothing_to_propagate() -> None:
    assert dict(propagation.current()) == {}
    assert propagation.outbound_headers(["accept"]) == {}
