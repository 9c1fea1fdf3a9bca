"""One replica of a workload: its Envoy side-car (when injected) and its app process.

Lifecycle: side-car first and ready, then the app, then the replica reports ready and the
supervisor adds its endpoint. A crashed app is restarted with exponential back-off (its endpoint
is withdrawn meanwhile). Stopping: endpoint withdrawn by the supervisor first, then `drain`, `stop`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from interstate.compile import Proxy
from interstate.model.index import Endpoint
from interstate.model.workload import Workload
from interstate.settings import Settings
from interstate.standalone.ports import PortAllocator
from interstate.standalone.process import Child, http_probe, tcp_probe, wait_ready
from interstate.standalone.proxy import EnvoyProcess

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    DRAINING = "draining"
    STOPPED = "stopped"


def app_environment(workload: Workload, replica: int, app_port: int, outbound_port: int | None) -> dict[str, str]:
    """The app's environment: where to listen, and the side-car as its HTTP proxy."""
    env = dict(os.environ)
    for key in (
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        env.pop(key, None)
    env.update(
        PORT=str(app_port),
        HOST="127.0.0.1",
        PYTHONUNBUFFERED="1",
        INTERSTATE_SERVICE=workload.name,
        INTERSTATE_REPLICA=str(replica),
        INTERSTATE_VERSION=workload.spec.version,
    )
    if outbound_port is not None:
        proxy = f"http://127.0.0.1:{outbound_port}"
        env.update(HTTP_PROXY=proxy, http_proxy=proxy, NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1")
    for key, value in workload.spec.runs().env.items():
        env[key] = expand(value, env)
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes-style `$(VAR)` references; unknown ones are left as written."""
    out = text
    for key in ("PORT", "HOST", "INTERSTATE_SERVICE", "INTERSTATE_REPLICA", "INTERSTATE_VERSION"):
        out = out.replace(f"$({key})", env.get(key, ""))
    return out


def app_command(workload: Workload, env: dict[str, str]) -> list[str]:
    argv = [expand(a, env) for a in workload.spec.runs().command]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


class Replica:
    def __init__(
        self,
        workload: Workload,
        index: int,
        settings: Settings,
        ports: PortAllocator,
        make_envoy: Callable[[Proxy], EnvoyProcess],
        http: httpx.AsyncClient,
        on_change: Callable[[], None],
    ) -> None:
        self.workload = workload
        self.index = index
        self.settings = settings
        self.http = http
        self.on_change = on_change
        self.state = State.STARTING
        self.restarts: dict[str, int] = {}  # child name -> times restarted
        self._ports = ports
        self.app_port = ports.take()
        self.sidecar: EnvoyProcess | None = None
        if workload.injected:
            self.proxy: Proxy | None = Proxy.sidecar(
                workload.name, index, inbound_port=ports.take(), outbound_port=ports.take(), app_port=self.app_port
            )
            self.sidecar = make_envoy(self.proxy)
        else:
            self.proxy = None
        env = app_environment(workload, index, self.app_port, self.proxy.outbound_port if self.proxy else None)
        cwd = settings.mesh_dir / (workload.spec.runs().working_dir or ".")
        self.app = Child(
            f"app {self.name}",
            app_command(workload, env),
            settings.run_dir / "logs" / f"{self.name}.app.log",
            env=env,
            cwd=cwd,
        )
        self._watchers: list[asyncio.Task[None]] = []
        self._down: set[str] = set()  # children that exited and are being restarted
        self._stopping = False

    @property
    def name(self) -> str:
        return f"{self.workload.name}-{self.index}"

    @property
    def endpoint(self) -> Endpoint | None:
        if self.state is not State.READY:
            return None
        port = self.proxy.inbound_port if self.proxy else self.app_port
        return Endpoint(self.workload.name, self.index, self.settings.host, port, self.workload.spec.version)

    async def start(self) -> None:
        """Side-car, then app; returns once both are ready (the endpoint may then be added)."""
        if self.sidecar is not None:
            await self.sidecar.start()
        await self._start_app()
        self.state = State.READY
        self._watchers = [asyncio.create_task(self._watch(self.app, self._start_app), name=f"watch {self.app.name}")]
        if self.sidecar is not None:
            self._watchers.append(
                asyncio.create_task(
                    self._watch(self.sidecar.child, self.sidecar.start), name=f"watch {self.sidecar.child.name}"
                )
            )

    async def _start_app(self) -> None:
        await self.app.start()
        probe = self.workload.spec.readiness_probe
        timeout = probe.timeout.total_seconds() if probe.timeout is not None else self.settings.ready_timeout_s
        if probe.http_get is not None:
            check = http_probe(self.http, f"http://127.0.0.1:{self.app_port}{probe.http_get.path}")
        else:
            check = tcp_probe("127.0.0.1", self.app_port)
        await wait_ready(self.app, check, timeout)

    async def _watch(self, child: Child, start: Callable[[], Awaitable[None]]) -> None:
        """Restart `child` whenever it exits, with exponential back-off; withdraw the endpoint
        while it is down."""
        backoff = self.settings.restart_backoff_s
        while not self._stopping:
            code = await child.wait()
            if self._stopping:
                return
            ran = time.monotonic() - child.started_at
            if ran >= self.settings.restart_reset_s:
                backoff = self.settings.restart_backoff_s
            log.warning("%s exited with %s after %.1fs; restarting in %.2fs", child.name, code, ran, backoff)
            self._down.add(child.name)
            if self.state is State.READY:
                self.state = State.RESTARTING
                self.on_change()
            await child.stop(0.1)  # reap anything left in its process group
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.restart_backoff_max_s)
            if self._stopping:
                return
            try:
                await start()
            except Exception as exc:  # keep supervising whatever went wrong
                log.error("%s failed to restart: %s", child.name, exc)
                await child.stop(self.settings.stop_timeout_s)  # started but never ready: try again
                continue
            self.restarts[child.name] = self.restarts.get(child.name, 0) + 1
            self._down.discard(child.name)
            if not self._down and self.state is State.RESTARTING:
                self.state = State.READY
                self.on_change()

    async def drain(self) -> None:
        """Let in-flight requests finish; call after the endpoint was withdrawn everywhere."""
        self.state = State.DRAINING
        if self.sidecar is not None:
            await self.sidecar.drain(self.settings.drain_timeout_s)

    async def stop(self) -> None:
        self._stopping = True
        self.state = State.STOPPED
        for watcher in self._watchers:
            watcher.cancel()
        await self.app.stop(self.settings.stop_timeout_s)
        if self.sidecar is not None:
            await self.sidecar.stop()
        ports = [self.app_port]
        if self.proxy is not None and self.sidecar is not None:
            ports += [self.proxy.inbound_port, self.proxy.outbound_port, self.sidecar.admin_port]
        self._ports.release(*ports)

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "state": self.state.value,
            "version": self.workload.spec.version,
            "app": {
                "pid": self.app.pid,
                "port": self.app_port,
                "restarts": self.restarts.get(self.app.name, 0),
                "log": str(self.app.log_path),
            },
        }
        if self.proxy is not None and self.sidecar is not None:
            out["sidecar"] = {
                "pid": self.sidecar.child.pid,
                "node": self.proxy.node_id,
                "inbound": self.proxy.inbound_port,
                "outbound": self.proxy.outbound_port,
                "admin": self.sidecar.admin_port,
                "log": str(self.sidecar.child.log_path),
                "restarts": self.restarts.get(self.sidecar.child.name, 0),
            }
        return out
