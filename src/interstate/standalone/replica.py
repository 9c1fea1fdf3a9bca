"""One unit the supervisor runs: a replica's Envoy side-car and app, or the ingress Envoy.

Everything about it was decided by the control plane (`protocol.UnitSpec`: ports, command,
environment, bootstrap file); this only runs it. Lifecycle: Envoy first and ready, then the app
and its readiness probe, then the unit reports READY. A child that exits is restarted with
exponential back-off (the unit reports RESTARTING meanwhile, so its endpoint is withdrawn).
Stopping: the control plane withdraws the endpoint first, then asks for `drain` and `stop`.
Called by `standalone.supervisor`; calls `process` and `telemetry.envoys`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from interstate.core.status import ReplicaState
from interstate.settings import Settings
from interstate.standalone.envoy import envoy_command
from interstate.standalone.process import Child, http_probe, tcp_probe, wait_ready
from interstate.standalone.protocol import UnitSpec, UnitStatus
from interstate.telemetry import envoy_admin
from interstate.telemetry.envoys import read_stats

log = logging.getLogger(__name__)

ACTIVE_REQUESTS = r"^http\.(inbound|inbound_plaintext|outbound|ingress)\.downstream_rq_active$"


class Unit:
    def __init__(
        self,
        spec: UnitSpec,
        settings: Settings,
        envoy_binary: Path,
        http: httpx.AsyncClient,
        on_change: Callable[[UnitStatus], None],
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.http = http
        self.on_change = on_change
        self.state = ReplicaState.STARTING
        self.restarts: dict[str, int] = {}
        self.envoy: Child | None = None
        self.app: Child | None = None
        if spec.envoy is not None:
            argv = envoy_command(envoy_binary, Path(spec.envoy.bootstrap), settings.envoy_log_level)
            name = spec.proxy.node_id if spec.proxy is not None else spec.name
            self.envoy = Child(f"envoy {name}", argv, Path(spec.envoy.log), outlives_us=True)
        if spec.app is not None:
            app = spec.app
            self.app = Child(
                f"app {spec.name}",
                app.argv,
                Path(app.log),
                env=app.env,
                cwd=Path(app.cwd),
                outlives_us=True,
                umask=settings.app_umask,
            )
        self._watchers: list[asyncio.Task[None]] = []
        self._down: set[str] = set()
        self._stopping = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def admin(self) -> str | None:
        return self.spec.admin

    def status(self) -> UnitStatus:
        return UnitStatus(
            self.spec,
            self.state,
            self.app.pid if self.app else None,
            self.envoy.pid if self.envoy else None,
            dict(self.restarts),
        )

    def _set(self, state: ReplicaState) -> None:
        if state is not self.state:
            self.state = state
            self.on_change(self.status())

    # ---- start and supervise ---------------------------------------------------------------
    async def start(self) -> None:
        """Envoy, then app; returns once both are ready (the endpoint may then be added)."""
        if self.envoy is not None:
            await self._start_envoy()
        if self.app is not None:
            await self._start_app()
        self._set(ReplicaState.READY)
        self._supervise()

    def adopt(self, app_pid: int | None, envoy_pid: int | None) -> None:
        """Take over this unit's processes, started by an earlier supervisor and verified by
        `standalone.adoption`; supervise them from now on as if we had started them."""
        for child, pid in ((self.app, app_pid), (self.envoy, envoy_pid)):
            if child is not None and pid is not None:
                child.adopt(pid)
        self.state = ReplicaState.READY
        self._supervise()

    def _supervise(self) -> None:
        for kind, child, start in (("envoy", self.envoy, self._start_envoy), ("app", self.app, self._start_app)):
            if child is not None:
                self._watchers.append(asyncio.create_task(self._watch(kind, child, start), name=f"watch {child.name}"))

    async def _start_envoy(self) -> None:
        socket = self.admin
        assert self.envoy is not None and socket is not None
        await self.envoy.start()
        ready = http_probe(lambda: envoy_admin.get(self.http, socket, "/ready", timeout=1.0))
        await wait_ready(self.envoy, ready, self.settings.ready_timeout_s)

    async def _start_app(self) -> None:
        assert self.app is not None and self.spec.app is not None
        app = self.spec.app
        await self.app.start()
        if app.probe_path is not None:
            url = f"http://127.0.0.1:{app.port}{app.probe_path}"
            check = http_probe(lambda: self.http.get(url, timeout=1.0))
        else:
            check = tcp_probe("127.0.0.1", app.port)
        await wait_ready(self.app, check, app.ready_timeout_s)

    async def _watch(self, kind: str, child: Child, start: Callable[[], Awaitable[None]]) -> None:
        """Restart `child` whenever it exits, with exponential back-off; the unit is RESTARTING
        (its endpoint withdrawn) while any of its children is down."""
        backoff = self.settings.restart_backoff_s
        while not self._stopping:
            code = await child.wait()
            if self._stopping:
                return
            ran = time.monotonic() - child.started_at
            if ran >= self.settings.restart_reset_s:
                backoff = self.settings.restart_backoff_s
            log.warning("%s exited with %s after %.1fs; restarting in %.2fs", child.name, code, ran, backoff)
            self._down.add(kind)
            if self.state is ReplicaState.READY:
                self._set(ReplicaState.RESTARTING)
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
            self.restarts[kind] = self.restarts.get(kind, 0) + 1
            self._down.discard(kind)
            if not self._down and self.state is ReplicaState.RESTARTING:
                self._set(ReplicaState.READY)
            else:
                self.on_change(self.status())  # a new pid

    # ---- leave -----------------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Stop taking new connections gracefully, then wait (bounded) for in-flight requests to
        finish. Call after the endpoint was withdrawn everywhere."""
        self._set(ReplicaState.DRAINING)
        socket = self.admin
        if self.envoy is None or not self.envoy.running or socket is None:
            return
        try:
            await envoy_admin.post(self.http, socket, "/drain_listeners", {"graceful": ""})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                active = await read_stats(self.http, socket, ACTIVE_REQUESTS)
                if sum(active.values()) == 0:
                    return
                await asyncio.sleep(0.05)
        except (httpx.HTTPError, ValueError):
            return

    async def stop(self) -> None:
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        if self.app is not None:
            await self.app.stop(self.settings.stop_timeout_s)
        if self.envoy is not None:
            await self.envoy.stop(self.settings.stop_timeout_s)
        self.state = ReplicaState.STOPPED
