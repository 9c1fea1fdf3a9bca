"""One child process (an app, an Envoy, the control plane): start, wait until ready, stop for sure.

Each child runs in its own session and process group with its output in a log file; `stop` sends
SIGTERM to the group, then SIGKILL after a timeout, so nothing outlives the supervisor's
shutdown. The data plane (apps, Envoys) outlives a supervisor that is killed, so that the next
`interstate up` can adopt it (`Child.adopt`); the control plane dies with it.
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
import psutil

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
    """A process we run: started by us (`start`), or found running and taken over (`adopt`:
    a unit started by an earlier `interstate up` that was killed). `outlives_us` children keep
    running when the supervisor dies (the data plane); the others get SIGTERM with it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
        outlives_us: bool = False,
        umask: int = -1,
    ) -> None:
        """`umask`: the child's own (an app gets its operator's); -1 keeps ours."""
        self.name = name
        self.umask = umask
        self.pass_fds = tuple(pass_fds)
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.outlives_us = outlives_us
        self.proc: asyncio.subprocess.Process | None = None
        self._adopted: int | None = None
        self._exited: asyncio.Event | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        return self._adopted

    @property
    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.returncode is None
        return self._exited is not None and not self._exited.is_set()

    def adopt(self, pid: int) -> None:
        """Take over a running process (not our child): we learn of its exit through a pidfd."""
        self.proc = None
        self._adopted = pid
        self.started_at = time.monotonic()
        exited = asyncio.Event()
        self._exited = exited
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            exited.set()
            return
        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            exited.set()

        loop.add_reader(fd, gone)

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv if self.outlives_us else dies_with_parent(self.argv)
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - opening a log file is instant
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    pass_fds=self.pass_fds,
                    umask=self.umask,
                )
            except (OSError, ValueError) as exc:
                raise StartupError(f"{self.name} could not be started: {exc}") from None
        self._adopted = None
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    async def wait(self) -> int:
        """Its exit code (-1 for an adopted process: only its parent can know)."""
        if self.proc is not None:
            return await self.proc.wait()
        assert self._exited is not None
        await self._exited.wait()
        return -1

    async def stop(self, timeout: float) -> None:
        if not self.running:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait(), timeout)
        except TimeoutError:
            log.warning("%s did not stop in %.1fs; killing it", self.name, timeout)
            self._signal(signal.SIGKILL)
            await self.wait()
        self._signal(signal.SIGKILL)  # anything the child left in its group
        log.info("stopped %s", self.name)

    async def kill(self) -> None:
        """SIGKILL its whole group at once (a stopped or hung process ignores SIGTERM) and reap it."""
        if self.running:
            self._signal(signal.SIGKILL)
            await self.wait()

    def _signal(self, sig: signal.Signals) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            os.killpg(pid, sig)  # its own session and group (start_new_session)
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


def http_probe(send: Callable[[], Awaitable[httpx.Response]]) -> Callable[[], Awaitable[bool]]:
    """Ready when what `send` asks (an app's probe path, an Envoy admin's /ready) answers 2xx/3xx."""

    async def probe() -> bool:
        try:
            response = await send()
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


def stopped(pid: int | None) -> bool:
    """The process is stopped (SIGSTOP, a debugger): it cannot answer until it is continued."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
