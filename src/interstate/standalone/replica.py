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
from interstate.standalone.process import Child, http_probe, stopped, tcp_probe, wait_ready
from interstate.standalone.protocol import UnitSpec, UnitStatus
from interstate.telemetry import envoy_admin
from interstate.telemetry.envoys import read_stats

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0  # one readiness probe while a child starts
LIVENESS_EVERY_S = 1.0
LIVENESS_TIMEOUT_S = 1.0
LIVENESS_RECHECK_S = 0.25  # after a failed check, the next one comes sooner
LIVENESS_FAILURES = 2  # checks in a row: one slow answer (a GC pause, a busy second) is not a hang
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
        self._watchers.append(asyncio.create_task(self._check_liveness(), name=f"liveness {self.name}"))

    # ---- liveness ----------------------------------------------------------------------------
    async def _answers(self) -> list[str]:
        """What of the unit does not answer now (empty: all of it does): a process stopped
        (SIGSTOP), its Envoy's /ready or its app's probe path silent past `LIVENESS_TIMEOUT_S`
        (a TCP connect proves nothing: the kernel accepts for a hung process). Any answer, an
        error status too, proves it alive: failing requests are the outlier detection's business."""
        silent = [c.name for c in (self.envoy, self.app) if c is not None and stopped(c.pid)]
        checks = [
            (child.name, ask)
            for child, ask in (
                (self.envoy, self._ask_envoy(LIVENESS_TIMEOUT_S)),
                (self.app, self._ask_app(LIVENESS_TIMEOUT_S)),
            )
            if child is not None and ask is not None
        ]
        answers = await asyncio.gather(*(answered(check) for _, check in checks))
        return silent + [name for (name, _), ok in zip(checks, answers, strict=True) if not ok and name not in silent]

    async def _check_liveness(self) -> None:
        """Every `LIVENESS_EVERY_S` (sooner after a failure): a unit that fails `LIVENESS_FAILURES` checks in a row is
        UNRESPONSIVE (its endpoint leaves EDS, callers stop sending to it), READY again when it
        answers; unresponsive for `unit_unresponsive_restart_s`, its silent processes are killed
        and restarted (counted as restarts["unresponsive"])."""
        failures = 0
        since = 0.0
        while not self._stopping:
            await asyncio.sleep(LIVENESS_RECHECK_S if failures else LIVENESS_EVERY_S)
            if self._down or self.state not in (ReplicaState.READY, ReplicaState.UNRESPONSIVE):
                failures = 0
                continue
            silent = await self._answers()
            if not silent:
                failures = 0
                if self.state is ReplicaState.UNRESPONSIVE:
                    log.warning("%s answers again", self.name)
                    self._set(ReplicaState.READY)
                continue
            failures += 1
            if failures == LIVENESS_FAILURES:
                log.warning("%s does not answer (%s): withdrawn from service", self.name, ", ".join(silent))
                since = time.monotonic()
                self._set(ReplicaState.UNRESPONSIVE)
            elif failures > LIVENESS_FAILURES and time.monotonic() - since >= self.settings.unit_unresponsive_restart_s:
                log.error(
                    "%s has not answered for %.0fs: restarting %s",
                    self.name,
                    time.monotonic() - since,
                    ", ".join(silent),
                )
                self.restarts["unresponsive"] = self.restarts.get("unresponsive", 0) + 1
                for child in (self.envoy, self.app):
                    if child is not None and child.name in silent:
                        await child.kill()  # its watcher restarts it
                failures = 0

    def _ask_envoy(self, timeout: float) -> Callable[[], Awaitable[httpx.Response]] | None:
        """GET its Envoy's /ready over the admin socket (readiness and liveness both ask it)."""
        socket = self.admin
        if self.envoy is None or socket is None:
            return None
        return lambda: envoy_admin.get(self.http, socket, "/ready", timeout=timeout)

    def _ask_app(self, timeout: float) -> Callable[[], Awaitable[httpx.Response]] | None:
        """GET its app's probe path; None when the workload names none."""
        app = self.spec.app
        if self.app is None or app is None or app.probe_path is None:
            return None
        url = f"http://127.0.0.1:{app.port}{app.probe_path}"
        return lambda: self.http.get(url, timeout=timeout)

    async def _start_envoy(self) -> None:
        ask = self._ask_envoy(PROBE_TIMEOUT_S)
        assert self.envoy is not None and ask is not None
        await self.envoy.start()
        await wait_ready(self.envoy, http_probe(ask), self.settings.ready_timeout_s)

    async def _start_app(self) -> None:
        assert self.app is not None and self.spec.app is not None
        app = self.spec.app
        await self.app.start()
        ask = self._ask_app(PROBE_TIMEOUT_S)
        check = http_probe(ask) if ask is not None else tcp_probe("127.0.0.1", app.port)
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


async def answered(send: Callable[[], Awaitable[httpx.Response]]) -> bool:
    """`send` got an HTTP answer of any status in time."""
    try:
        await send()
    except httpx.HTTPError:
        return False
    return True
