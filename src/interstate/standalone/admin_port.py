"""The admin API's port, held by the supervisor for the mesh's whole life.

The supervisor binds it once and hands the listening socket to each control plane it starts (the
admin API serves on it there). While a control plane is away, the port stays ours, so no other
process on the machine can take it and collect the admin token from the next CLI call; and
`AwayAnswer` answers every request at once: 503, "the control plane is restarting". Requests that
arrive while a new control plane starts wait in the socket's backlog and are served by it. A
control plane that is there but does not answer (stopped, hung) gets the same stand-in: it does
not accept, so every connection comes to `AwayAnswer` until it answers the supervisor again.
Called by `standalone.supervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket

from interstate.errors import PermanentError

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024  # a request head we read (and drop) before answering
READ_TIMEOUT_S = 2.0
AWAY = "the control plane is restarting; the data plane serves on; try again in a moment"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or PermanentError saying what to do."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise PermanentError(
            f"admin port {port} on {host} is in use ({exc.strerror}); choose another "
            "(--admin-port) or let interstate pick free ports (--auto-ports)"
        ) from None
    sock.set_inheritable(True)
    sock.setblocking(False)
    return sock


class AwayAnswer:
    """Accepts on the held socket while no control plane serves it, answering 503 at once."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reason = AWAY
        self._task: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Task[None]] = set()

    def start(self, reason: str = AWAY) -> None:
        """Answer 503 with `reason` (why the control plane does not) until `stop`."""
        self.reason = reason
        if self._task is None:
            self._task = asyncio.create_task(self._accept(), name="admin port: control plane away")

    async def stop(self) -> None:
        """Stop accepting (a control plane is about to); answers under way finish."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            answer = asyncio.create_task(self._answer(conn))
            self._answers.add(answer)
            answer.add_done_callback(self._answers.discard)

    async def _answer(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        body = json.dumps({"error": self.reason}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
        ).encode()
        with conn:
            conn.setblocking(False)
            with contextlib.suppress(OSError, TimeoutError):
                seen = b""
                while b"\r\n\r\n" not in seen and len(seen) < HEAD_LIMIT:  # answer after the head
                    chunk = await asyncio.wait_for(loop.sock_recv(conn, 4096), READ_TIMEOUT_S)
                    if not chunk:
                        return
                    seen += chunk
                await asyncio.wait_for(loop.sock_sendall(conn, head + body), READ_TIMEOUT_S)
                conn.shutdown(socket.SHUT_WR)
                drained = 0  # the rest of a request body, so that closing does not reset the answer
                while drained < HEAD_LIMIT * 4:
                    chunk = await asyncio.wait_for(loop.sock_recv(conn, 4096), 0.5)
                    if not chunk:
                        break
                    drained += len(chunk)
