"""The admin API's door: every request is checked here before a route sees it.

In order:
1. `Host` must name the address the API listens on (or `localhost` on a loopback address): a web
   page that rebinds its own DNS name to 127.0.0.1 is refused (403), whatever else it sends.
2. A credential: the admin token as `Authorization: Bearer ...` (what the CLI sends; its holder
   becomes the audit trail's actor), or, for reading the dashboard's data only, the session
   cookie a sign-in link set (`core.access`). `GET /healthz` alone needs none (it says "ok").
   `GET /dashboard?login=CODE` trades a one-time code for the cookie and redirects.
3. A change (POST) must say `Content-Type: application/json` (415 otherwise): an HTML form on
   another site cannot send that without the browser asking first, and we never say yes.
4. The body is read here, at most `limits.MAX_REQUEST_BYTES` for `/apply` and `SMALL_BODY`
   for the other changes (413 past it, before any JSON is parsed), and handed on.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interstate.config import limits
from interstate.core.access import LOGIN_PARAM, SESSION_COOKIE, SESSION_TTL_S, Gate, session_cookie
from interstate.errors import ConfigError

OPEN = frozenset({"/healthz"})
SESSION_READS = frozenset({"/dashboard/data"})
PAGE = "/dashboard"
SMALL_BODY = 64 * 1024  # a scale, fault or split request is a few hundred bytes
SIGN_IN = (
    '<!doctype html><meta charset=utf-8><link rel=icon href="data:,"><title>interstate: sign in</title>'
    "<p>This dashboard needs a sign-in link: open the <code>dashboard=</code> link of the ready line "
    "of <code>interstate up</code>, or run <code>interstate dashboard</code> for a new one.</p>"
)


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The `Host` values a request may carry: the listening address (and `localhost` for a
    loopback one); None (any) when the API listens on every address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return frozenset({f"{host.lower()}:{port}"})
    if address.is_unspecified:
        return None
    shown = f"[{host}]" if address.version == 6 else host
    names = {f"{shown}:{port}"}
    if address.is_loopback:
        names.add(f"localhost:{port}")
    return frozenset(names)


class Guard:
    def __init__(self, app: ASGIApp, gate: Gate, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.gate = gate
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path, method = scope["path"], scope["method"]
        host = headers.get("host", "").lower()
        if self.hosts is not None and host not in self.hosts:
            await _json(send, 403, f"Host {host[:100]!r} is not this API's address ({', '.join(sorted(self.hosts))})")
            return
        state = scope.setdefault("state", {})
        if path not in OPEN:
            if self.gate.bearer(headers.get("authorization")):
                state["actor"] = self.gate.actor
            elif path == PAGE and method == "GET":
                code = QueryParams(scope.get("query_string", b"")).get(LOGIN_PARAM)
                if code is not None and self.gate.redeem(code):
                    await _signed_in(send, session_cookie(self.gate.token))
                    return
                if not self.gate.session(_cookie(headers)):
                    await _send(send, 401, SIGN_IN.encode(), "text/html; charset=utf-8")
                    return
            elif not (method == "GET" and path in SESSION_READS and self.gate.session(_cookie(headers))):
                await _json(
                    send,
                    401,
                    "this API needs a credential: the admin token of the run folder (`interstate up` writes "
                    "it to RUN_DIR/admin.token; the CLI reads it, see --token-file) as `Authorization: Bearer`",
                    {"www-authenticate": 'Bearer realm="interstate"'},
                )
                return
        if method in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            await _json(send, 415, f"a change must be sent as application/json, not {media[:60] or 'no type'!r}")
            return
        try:
            body = limits.RequestBody(
                headers.get("content-length"), limits.MAX_REQUEST_BYTES if path == "/apply" else SMALL_BODY
            )
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body.add(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except ConfigError as exc:
            await _json(send, 413, exc.issues[0].message)
            return
        await self.app(scope, _replay(body.data(), receive), send)


def _cookie(headers: Headers) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value
    return None


def _replay(body: bytes, then: Receive) -> Receive:
    """The body read here, then what the client does next (a disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _send(send: Send, status: int, body: bytes, media: str, extra: dict[str, str] | None = None) -> None:
    headers = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, error: str, extra: dict[str, str] | None = None) -> None:
    body: dict[str, Any] = {"error": error}
    await _send(send, status, json.dumps(body).encode(), "application/json", extra)


async def _signed_in(send: Send, cookie: str) -> None:
    """The session cookie, and away from the one-time link (so a reload does not reuse it)."""
    value = f"{SESSION_COOKIE}={cookie}; Max-Age={SESSION_TTL_S}; Path=/; HttpOnly; SameSite=Strict"
    await _send(send, 303, b"", "text/plain", {"location": PAGE, "set-cookie": value, "cache-control": "no-store"})
