"""A test app that records every header it receives and relays requests on, headers and all.

Served like any mesh app: `python -m uvicorn relay_app:app --host 127.0.0.1 --port $(PORT)`.

    GET /seen          every recorded request's headers ([[name, value], ...]), oldest first
    GET /...?to=URL    record, then GET URL through the side-car (HTTP_PROXY) with *every*
                       header this request came with, plus `x-internal-note: draft` that the app
                       adds itself; answers {"status": ..., "body": ...} of that call
    GET /...           record, answer {"ok": true}

It is the careless app a header allow-list must protect against: it forwards whatever it gets.
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

HOP = {"host", "content-length", "connection", "transfer-encoding"}
seen: list[list[list[str]]] = []


async def records(request: Request) -> JSONResponse:
    return JSONResponse(seen)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def relay(request: Request) -> JSONResponse:
    seen.append([[k, v] for k, v in request.headers.items()])
    target = request.query_params.get("to")
    if not target:
        return JSONResponse({"ok": True})
    headers: list[tuple[str, str]] = [(k, v) for k, v in request.headers.items() if k not in HOP]
    headers.append(("x-internal-note", "draft"))
    client: httpx.AsyncClient = request.app.state.client
    response = await client.get(target, headers=headers)
    body: Any = response.text
    return JSONResponse({"status": response.status_code, "body": body})


app = Starlette(
    routes=[Route("/seen", records), Route("/healthz", healthz), Route("/{path:path}", relay)],
)
app.state.client = httpx.AsyncClient(timeout=10.0)  # HTTP_PROXY: the side-car
