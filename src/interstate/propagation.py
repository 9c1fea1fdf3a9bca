"""Carry the policy context (and request ID) from an app's inbound request to its outbound calls.

A side-car cannot tie an app's outbound call to the inbound request that caused it; the app's
own process can. The middlewares store the inbound headers in a context variable for the
length of a request; the client hooks put them on every outbound call that does not set them
itself. The side-car still adds the workload's default when neither did.

    ASGI (Starlette, FastAPI ...):  app = PropagationMiddleware(app)
    WSGI (Flask, Django ...):       app = WSGIPropagationMiddleware(app)
    httpx:                          httpx.AsyncClient(event_hooks=httpx_hooks())
                                    httpx.Client(event_hooks=httpx_hooks(asynchronous=False))
    requests:                       session = propagating_session()  (or mount PropagatingAdapter)

Each request has its own context (asyncio tasks and server threads each see their own), so
concurrent requests never lend each other their headers.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

import httpx

PROPAGATED = ("x-policy-ctx", "x-request-id")

_NONE: Mapping[str, str] = MappingProxyType({})
_current: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("interstate_propagated")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def current() -> Mapping[str, str]:
    """The propagated headers of the request being handled (empty outside a request)."""
    return _current.get(_NONE)


def outbound_headers(existing: Iterable[str]) -> dict[str, str]:
    """The propagated headers an outbound call lacks (names compared without case)."""
    have = {name.lower() for name in existing}
    return {name: value for name, value in current().items() if name not in have}


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


class WSGIPropagationMiddleware:
    """WSGI middleware: the same, for each request a WSGI server hands to the app."""

    def __init__(self, app: WSGIApp, headers: tuple[str, ...] = PROPAGATED) -> None:
        self.app = app
        self.keys = {"HTTP_" + h.upper().replace("-", "_"): h.lower() for h in headers}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        found = {name: environ[key] for key, name in self.keys.items() if key in environ}
        context = contextvars.copy_context()
        context.run(_current.set, found)
        # The body may be produced lazily, after this call returns: produce it in the context too.
        return _InContext(context, context.run(self.app, environ, start_response))


class _InContext:
    def __init__(self, context: contextvars.Context, body: Iterable[bytes]) -> None:
        self.context = context
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        iterator = self.context.run(iter, self.body)
        while True:
            try:
                yield self.context.run(next, iterator)
            except StopIteration:
                return

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            self.context.run(close)


def _inject(request: httpx.Request) -> None:
    request.headers.update(outbound_headers(request.headers.keys()))


async def _inject_async(request: httpx.Request) -> None:
    _inject(request)


def httpx_hooks(asynchronous: bool = True) -> dict[str, list[Callable[..., Any]]]:
    """`event_hooks` for httpx.AsyncClient (default) or httpx.Client."""
    return {"request": [_inject_async if asynchronous else _inject]}


try:  # `requests` is optional: only apps that use it need it
    import requests
    from requests.adapters import HTTPAdapter

    class PropagatingAdapter(HTTPAdapter):
        """A `requests` transport adapter that adds the propagated headers to every call."""

        def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
            super().add_headers(request, **kwargs)
            request.headers.update(outbound_headers(request.headers.keys()))

    def propagating_session() -> requests.Session:
        """A `requests.Session` whose calls carry the propagated headers."""
        session = requests.Session()
        adapter = PropagatingAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

except ImportError:  # pragma: no cover - exercised only where requests is absent
    pass
