"""Talking to an Envoy's admin interface, which listens on a Unix socket and nowhere else.

Every Envoy the standalone mesh runs serves its admin on a socket file in the run folder (mode
0600 in a 0700 folder: `compile.bootstrap`), so only the mesh's own user reaches `/stats`,
`/certs` or `/quitquitquit`; no TCP port answers for it. Whoever reads an Envoy (telemetry, the
dashboard, the autoscaler, readiness, draining, log rotation) asks through a client made by
`client()`, naming the socket of the Envoy it wants with `get`/`post`; the same client still
speaks plain HTTP over TCP to anything else (an app's readiness probe).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx

from interstate.errors import PermanentError

SOCKET = "interstate.envoy_admin"  # the request extension naming the admin socket to use
ORIGIN = "http://envoy-admin"  # the URL's origin: the socket, not the host, says which Envoy
MAX_SOCKETS = 4096  # connection pools kept open at once (one per Envoy); the oldest is closed past it


MAX_SOCKET_PATH = 107  # bytes of a Unix socket's path that Linux keeps (sun_path, less its NUL)


def socket_path(folder: Path, stem: str) -> str:
    """Where the Envoy `stem` (a node ID made a file name) serves its admin: `folder/stem.admin`,
    or a digest of `stem` where that path would be too long for a Unix socket. PermanentError
    when even that does not fit (a run folder deep in the file tree)."""
    path = str(folder.absolute() / f"{stem}.admin")
    if len(path.encode()) > MAX_SOCKET_PATH:
        path = str(folder.absolute() / f"{hashlib.sha256(stem.encode()).hexdigest()[:16]}.admin")
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise PermanentError(
            f"the run folder {folder.parent} is too deep for Envoy's admin sockets ({path} is "
            f"{len(path.encode())} bytes; Unix sockets allow {MAX_SOCKET_PATH}); choose a shorter --run-dir"
        )
    return path


class AdminTransport(httpx.AsyncBaseTransport):
    """Sends a request carrying the `SOCKET` extension over that Unix socket (one small pool per
    socket), and any other request over TCP as httpx would."""

    def __init__(self) -> None:
        self._tcp = httpx.AsyncHTTPTransport()
        self._pools: OrderedDict[str, httpx.AsyncHTTPTransport] = OrderedDict()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.extensions.get(SOCKET)
        if path is None:
            return await self._tcp.handle_async_request(request)
        pool = self._pools.get(path)
        if pool is None:
            pool = self._pools[path] = httpx.AsyncHTTPTransport(uds=path, limits=httpx.Limits(max_connections=4))
            if len(self._pools) > MAX_SOCKETS:
                _, oldest = self._pools.popitem(last=False)
                await oldest.aclose()
        else:
            self._pools.move_to_end(path)
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        await self._tcp.aclose()
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()


def client(**kwargs: Any) -> httpx.AsyncClient:
    """An httpx client that reaches Envoy admins by socket (and anything else over TCP)."""
    return httpx.AsyncClient(transport=AdminTransport(), trust_env=False, **kwargs)


async def get(
    http: httpx.AsyncClient, socket: str, path: str, params: dict[str, str] | None = None, timeout: float = 2.0
) -> httpx.Response:
    """GET `path` from the Envoy whose admin socket is `socket`. Raises httpx.HTTPError."""
    return await http.get(ORIGIN + path, params=params, timeout=timeout, extensions={SOCKET: socket})


async def post(
    http: httpx.AsyncClient, socket: str, path: str, params: dict[str, str] | None = None, timeout: float = 2.0
) -> httpx.Response:
    """POST `path` to the Envoy whose admin socket is `socket`. Raises httpx.HTTPError."""
    return await http.post(ORIGIN + path, params=params, timeout=timeout, extensions={SOCKET: socket})
