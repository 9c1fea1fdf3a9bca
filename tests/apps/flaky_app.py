"""A test upstream that misbehaves on demand and counts every request it sees.

Served like any mesh app: `python -m uvicorn flaky_app:app --http h11 --host 127.0.0.1 --port $(PORT)`.
Tests switch one replica at run time by calling it directly on its app port (from `MeshRun.status()`):

    PUT    /__flaky        {"mode": "ok" | "fail" | "delay" | "close", "delay_s": 2.0, "status": 500}
    GET    /__flaky/seen   every request recorded since the last DELETE, oldest first
    DELETE /__flaky/seen   forget them

Modes: `ok` answers 200 with JSON naming the replica; `fail` answers `status` (500); `delay`
waits `delay_s` and then answers 200; `close` reads the whole request and closes the connection
without answering (what a crash mid-request looks like to the side-car in front).
The starting mode comes from the environment: FLAKY_MODE (default ok), FLAKY_DELAY_S (default 0).
Every request except `/__flaky*` and `/healthz` is recorded when it arrives, before the mode acts,
with its id: the `x-test-id` header a test sets, else `x-request-id`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MODES = ("ok", "fail", "delay", "close")
REPLICA = f"{os.environ.get('INTERSTATE_SERVICE', '?')}-{os.environ.get('INTERSTATE_REPLICA', '?')}"
state: dict[str, Any] = {
    "mode": os.environ.get("FLAKY_MODE", "ok"),
    "delay_s": float(os.environ.get("FLAKY_DELAY_S", "0")),
    "status": 500,
}
seen: list[dict[str, Any]] = []


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def control(request: Request) -> Response:
    if request.method == "PUT":
        body = await request.json()
        if body.get("mode") not in MODES:
            return JSONResponse({"error": f"mode must be one of {MODES}"}, 400)
        state.update({"delay_s": 0.0, "status": 500})
        state.update({k: body[k] for k in ("mode", "delay_s", "status") if k in body})
    return JSONResponse({"replica": REPLICA, **state})


async def requests_seen(request: Request) -> Response:
    if request.method == "DELETE":
        seen.clear()
    return JSONResponse(seen)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def serve(request: Request) -> Response:
    mode = state["mode"]
    await request.body()  # before any delay: the caller may hang up while we wait
    if mode == "fail":
        return JSONResponse({"served_by": REPLICA, "error": "failing on purpose"}, state["status"])
    if mode == "delay":
        await asyncio.sleep(float(state["delay_s"]))
    return JSONResponse({"served_by": REPLICA, "id": request.headers.get("x-test-id"), "method": request.method})


routes = Starlette(
    routes=[
        Route("/__flaky", control, methods=["GET", "PUT"]),
        Route("/__flaky/seen", requests_seen, methods=["GET", "DELETE"]),
        Route("/healthz", healthz),
        Route("/{path:path}", serve, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]),
    ]
)


async def _close_without_answer(receive: Any, send: Any) -> None:
    """Read the whole request, then drop the connection. ASGI has no "close" message, so this
    reaches uvicorn's transport through its `send` (a bound method of the request cycle)."""
    more = True
    while more:
        message = await receive()
        more = message.get("type") == "http.request" and message.get("more_body", False)
    transport = send.__self__.transport  # AttributeError here: uvicorn changed; the test says so
    transport.abort()
    await asyncio.sleep(0)  # let uvicorn see the connection is gone, so it does not answer 500


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    if scope["type"] == "http" and not path.startswith(("/__flaky", "/healthz")):
        seen.append(
            {
                "id": _header(scope, b"x-test-id") or _header(scope, b"x-request-id"),
                "request_id": _header(scope, b"x-request-id"),
                "method": scope["method"],
                "path": path,
                "mode": state["mode"],
                "replica": REPLICA,
                "at": time.time(),
            }
        )
        if state["mode"] == "close":
            await _close_without_answer(receive, send)
            return
    await routes(scope, receive, send)
