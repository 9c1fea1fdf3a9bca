"""Who may see or change a running mesh: the admin token, dashboard sign-in links and sessions.

- The admin token: 32 random bytes, created by `interstate up` in the run folder (`admin.token`,
  0600, a new one at every start); the CLI reads it and sends it as a bearer token; the control
  plane reads it at each (re)start. Its holder is named in the audit trail as `TOKEN_ACTOR`
  (the OS user who started the mesh, by the file's owner).
- A sign-in link for a browser: `/dashboard?login=CODE`, where the code is minted from the token
  by whoever can read it (the supervisor for the ready line, `interstate dashboard` later), valid
  for a while and once: the admin API trades it for a session cookie.
- A session: a cookie `SESSION_COOKIE` = `expiry.hmac`, read-only (the dashboard's data), signed
  with the token, so it outlives a control-plane restart and dies with the next `interstate up`.
Pure apart from the token file. Used by `standalone` (create), the admin API (check), the CLI.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pwd
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_FILE = "admin.token"
SESSION_COOKIE = "interstate_session"
LOGIN_PARAM = "login"
SESSION_TTL_S = 12 * 3600
READY_LINK_TTL_S = 3600  # the link in the ready line
LINK_TTL_S = 600  # a link from `interstate dashboard`
MAX_USED_CODES = 10_000


def create_token(run_dir: Path) -> str:
    """A new admin token in `run_dir/admin.token` (0600, replacing any older one)."""
    token = secrets.token_urlsafe(32)
    path = run_dir / TOKEN_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    os.replace(tmp, path)
    return token


def read_token(path: Path) -> str:
    """The token in `path`; OSError when it cannot be read, ValueError when it is no token."""
    token = path.read_text(encoding="ascii", errors="replace").strip()
    if len(token) < 32 or not token.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{path} holds no admin token")
    return token


def token_actor(path: Path) -> str:
    """How the audit trail names the holder of the token in `path`: the owner of the file."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return "admin token"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (admin token)"
    except KeyError:
        return f"uid {uid} (admin token)"


def _sign(token: str, *parts: str) -> str:
    return hmac.new(token.encode(), "|".join(parts).encode(), hashlib.sha256).hexdigest()


def login_code(token: str, ttl_s: float = LINK_TTL_S, now: float | None = None) -> str:
    """A one-time sign-in code for the dashboard, valid for `ttl_s`."""
    expires = str(int((time.time() if now is None else now) + ttl_s))
    nonce = secrets.token_urlsafe(12)
    return f"{expires}.{nonce}.{_sign(token, 'login', expires, nonce)}"


def session_cookie(token: str, now: float | None = None) -> str:
    expires = str(int((time.time() if now is None else now) + SESSION_TTL_S))
    return f"{expires}.{_sign(token, 'session', expires)}"


@dataclass
class Gate:
    """The admin API's view of the credentials: the token, and the sign-in codes already used."""

    token: str
    actor: str = "admin token"
    clock: Callable[[], float] = time.time
    _used: dict[str, float] = field(default_factory=dict)  # nonce -> expiry

    def bearer(self, header: str | None) -> bool:
        """True when an `Authorization` header carries the token."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    def session(self, cookie: str | None) -> bool:
        """True when a session cookie is one this token signed and it has not expired."""
        expires, _, sig = (cookie or "").partition(".")
        if not expires.isdigit() or not hmac.compare_digest(
            sig.encode(), _sign(self.token, "session", expires).encode()
        ):
            return False
        return int(expires) > self.clock()

    def redeem(self, code: str) -> bool:
        """True (once) for a valid, unexpired sign-in code."""
        expires, _, rest = code.partition(".")
        nonce, _, sig = rest.partition(".")
        if not expires.isdigit() or not nonce:
            return False
        if not hmac.compare_digest(sig.encode(), _sign(self.token, "login", expires, nonce).encode()):
            return False
        now = self.clock()
        if int(expires) <= now or nonce in self._used:
            return False
        if len(self._used) >= MAX_USED_CODES:
            self._used = {n: e for n, e in self._used.items() if e > now}
            if len(self._used) >= MAX_USED_CODES:
                return False  # flooded with valid codes: only a token holder can mint them
        self._used[nonce] = float(expires)
        return True
