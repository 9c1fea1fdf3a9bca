"""Carry the policy context (and request ID) from an app's inbound request to its outbound calls.

A side-car cannot tie an app's outbound call to the inbound request that caused it; the app's
own process can. `PropagationMiddleware` (ASGI) stores the inbound headers in a context variable;
`httpx_hooks()` puts them on every outbound httpx request that does not set them itself.
The side-car still adds the workload's default when neither did.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

import httpx

PROPAGATED = ("x-policy-ctx", "x-request-id")

_NONE: Mapping[str, str] = MappingProxyType({})
_current: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("interstate_propagated")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def current() -> Mapping[str, str]:
    """The propagated headers of the request being handled (empty outside a request)."""
    return _current.get(_NONE)


class PropagationMiddleware:
    """ASGI middleware: remember the propagated headers of each inbound HTTP request."""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], headers: tuple[str, ...] = PROPAGATED
    ) -> None:
        self.app = app
        self.names = {h.lower().encode() for h in headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"] if k.lower() in self.names}
        token = _current.set(found)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)


def _inject(request: httpx.Request) -> None:
    for name, value in current().items():
        if name not in request.headers:
            request.headers[name] = value


async def _inject_async(request: httpx.Request) -> None:
    _inject(request)


def httpx_hooks(asynchronous: bool = True) -> dict[str, list[Callable[..., Any]]]:
    """`event_hooks` for httpx.AsyncClient (default) or httpx.Client."""
    return {"request": [_inject_async if asynchronous else _inject]}
