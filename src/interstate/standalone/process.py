"""One child process (an app or an Envoy): start, wait until ready, stop for sure.

Each child runs in its own process group with its output in a log file; `stop` sends SIGTERM to
the group, then SIGKILL after a timeout, so nothing outlives the supervisor's shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import httpx

from interstate.errors import StartupError

log = logging.getLogger(__name__)


# Runs as the child, then becomes the real program: ask Linux to SIGTERM us when the supervisor
# dies (the setting survives exec), so children never outlive a supervisor killed with SIGKILL.
# A launcher rather than preexec_fn: forking with gRPC's threads running is not safe.
_LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped so the program gets SIGTERM when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]


class Child:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.pass_fds = tuple(pass_fds)
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - opening a log file is instant
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *dies_with_parent(self.argv),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    pass_fds=self.pass_fds,
                )
            except (OSError, ValueError) as exc:
                raise StartupError(f"{self.name} could not be started: {exc}") from None
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("%s did not stop in %.1fs; killing it", self.name, timeout)
            self._signal(signal.SIGKILL)
            await proc.wait()
        self._signal(signal.SIGKILL)  # anything the child left in its group
        log.info("stopped %s (exit %s)", self.name, proc.returncode)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


async def wait_ready(
    child: Child, probe: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.02
) -> None:
    """Poll `probe` until it returns True; fail early if the child exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.running:
            raise StartupError(
                f"{child.name} exited with {child.proc.returncode if child.proc else '?'} "
                f"before it was ready; see {child.log_path}"
            )
        if await probe():
            return
        if time.monotonic() > deadline:
            raise StartupError(f"{child.name} was not ready after {timeout:.0f}s; see {child.log_path}")
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def http_probe(client: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        try:
            response = await client.get(url, timeout=1.0)
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 400

    return probe


def tcp_probe(host: str, port: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    return probe


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
