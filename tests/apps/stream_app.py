"""A test app that streams: server-sent events, slow answers, a WebSocket echo.

Served like any mesh app: `python -m uvicorn stream_app:app --host 127.0.0.1 --port $(PORT)`
(uvicorn speaks WebSocket with wsproto). Every path also answers under any prefix, so a Gateway
route `/s` reaches `/s/events` as `/events`'s handler.

    GET .../events?n=N&every=S   N events `data: i`, one every S seconds (text/event-stream)
    GET .../slow?s=S             answers {"slept": S} after S seconds
    WS  .../ws                   echoes every text message; the first message back is the
                                 policy header the upgrade request carried (or "-")
    GET .../healthz              {"ok": true}
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def events(request: Request) -> Response:
    count = int(request.query_params.get("n", "10"))
    every = float(request.query_params.get("every", "0.1"))

    async def produce() -> AsyncIterator[bytes]:
        for i in range(count):
            if i:
                await asyncio.sleep(every)
            yield f"data: {i}\n\n".encode()

    return StreamingResponse(produce(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def slow(request: Request) -> JSONResponse:
    seconds = float(request.query_params.get("s", "1"))
    await asyncio.sleep(seconds)
    return JSONResponse({"slept": seconds})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def echo(socket: WebSocket) -> None:
    await socket.accept()
    await socket.send_text(socket.headers.get("x-policy-ctx", "-"))
    try:
        while True:
            await socket.send_text(await socket.receive_text())
    except WebSocketDisconnect:
        pass


def anywhere(path: str) -> str:
    """`/events` and `/<prefix>/events` alike."""
    return "/{prefix:path}" + path


app = Starlette(
    routes=[
        *(Route(p, events) for p in ("/events", anywhere("/events"))),
        *(Route(p, slow) for p in ("/slow", anywhere("/slow"))),
        *(WebSocketRoute(p, echo) for p in ("/ws", anywhere("/ws"))),
        Route("/healthz", healthz),
    ]
)
