"""The standalone supervisor (`interstate up`): runs what the control plane asks for, and keeps
the control plane itself running.

It starts the control plane as a child process (`interstate.controlplane`) joined by a private
socket pair, and restarts it with back-off whenever it dies: the apps and Envoys keep running
meanwhile and the Envoys serve their last configuration. Everything mesh-specific is decided in
the control plane; here are only processes: `start` a unit (Envoy, then app, both probed ready),
`drain` and `stop` units, restart a unit's child that exits, and report every unit's state
(`hello` with all of them at each control-plane start, `unit` events on change).
Called by `up`; calls `standalone.replica`, `standalone.protocol`, `standalone.state`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from interstate import audit
from interstate.core import access
from interstate.core.status import ControlPlaneInfo, SupervisorInfo, to_json
from interstate.errors import InterstateError, PermanentError, TemporaryError
from interstate.settings import Settings
from interstate.standalone import admin_port, adoption
from interstate.standalone.admin_port import AwayAnswer
from interstate.standalone.envoy import find_envoy
from interstate.standalone.process import Child
from interstate.standalone.protocol import Channel, UnitSpec, UnitStatus
from interstate.standalone.replica import Unit
from interstate.telemetry import envoy_admin

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 60.0
HELLO_TIMEOUT_S = 60.0  # a control plane that cannot load its state and listen by then is replaced
RESUME_TIMEOUT_S = 120.0
PING_EVERY_S = 0.5  # the control plane's liveness: asked this often ...
PING_TIMEOUT_S = 1.0  # ... and silent past this, the admin API is answered 503 for it


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


class Supervisor:
    def __init__(self, settings: Settings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        self.envoy_binary = find_envoy(settings.envoy_path)
        self.units: dict[str, Unit] = {}
        self.adopted: list[str] = []
        self._starting: set[asyncio.Task[Any]] = set()  # `start` requests being carried out
        self.http = envoy_admin.client()  # Envoy admins by socket, apps by TCP
        self.channel: Channel | None = None
        self.control_plane: Child | None = None
        self.info: ControlPlaneInfo | None = None
        self.restarts = 0
        self.ready = asyncio.Event()
        self.failed: InterstateError | None = None  # the first start failed: nothing to supervise
        self.stopping = False
        self._started_mesh = False
        self.admin_sock = admin_port.bind(settings.host, settings.admin_port)  # held for the mesh's life
        self.away = AwayAnswer(self.admin_sock)
        self._silenced: str | None = None  # why we killed the last control plane, if we did

    # ---- what an earlier supervisor left running -------------------------------------------
    def adopt(self, found: list[adoption.Found]) -> None:
        """Supervise the units a killed `interstate up` left serving (verified by
        `adoption.survey`); stop what is left of the others (they are started afresh)."""
        for item in found:
            if item.adoptable:
                unit = Unit(item.unit.spec, self.settings, self.envoy_binary, self.http, self._report)
                unit.adopt(item.unit.app_pid, item.unit.envoy_pid)
                self.units[unit.name] = unit
                self.adopted.append(unit.name)
            else:
                log.warning("not adopting %s (%s); stopping what is left of it", item.unit.name, item.why)
                adoption.terminate(item.pids, self.settings.stop_timeout_s)
        self._save()

    def _save(self) -> None:
        adoption.save_units(self.settings.run_dir, [u.status() for u in self.units.values()])

    # ---- the control plane -----------------------------------------------------------------
    async def keep_control_plane(self) -> None:
        """Run the control plane; restart it with back-off each time it dies, until stopping."""
        backoff = self.settings.control_plane_backoff_s
        last_exit: str | None = None
        while not self.stopping:
            began = time.monotonic()
            try:
                await self._run_control_plane(last_exit)
            except InterstateError as exc:
                if not self._started_mesh:
                    self.failed = exc
                    self.ready.set()
                    return
                log.error("control plane: %s", exc)
            except Exception:  # whatever happened, keep a control plane running
                log.exception("supervising the control plane failed")
            code = None
            if self.control_plane is not None:
                if self.control_plane.running and not self.stopping:
                    await self.control_plane.stop(self.settings.stop_timeout_s)  # we gave up on it
                code = await self.control_plane.wait()
            if self.stopping:
                return
            self.away.start()  # until the next one serves: 503 at once, and the port stays ours
            last_exit = self._silenced or describe_exit(code)
            self._silenced = None
            if time.monotonic() - began >= self.settings.restart_reset_s:
                backoff = self.settings.control_plane_backoff_s
            self.restarts += 1
            self.say(
                f"interstate: the control plane {last_exit}; restarting it in {backoff:.2f}s (the data plane serves on)"
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max(self.settings.restart_backoff_max_s, self.settings.control_plane_backoff_s))

    async def _run_control_plane(self, last_exit: str | None) -> None:
        await self.away.stop()  # the new control plane serves the admin port
        ours, theirs = socket.socketpair()
        child = Child(
            "control plane",
            [
                sys.executable,
                "-m",
                "interstate.controlplane",
                str(self.settings.run_dir),
                str(theirs.fileno()),
                logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                str(self.admin_sock.fileno()),
            ],
            self.settings.run_dir / "logs" / "control-plane.log",
            pass_fds=(theirs.fileno(), self.admin_sock.fileno()),
        )
        self.control_plane = child
        try:
            await child.start()
        finally:
            theirs.close()
        assert child.pid is not None
        channel = await Channel.over_socket(ours, self._handle, self._listen)
        reading = asyncio.create_task(channel.run())
        self.channel = channel
        self.info = ControlPlaneInfo(
            child.pid, self.restarts, datetime.now(UTC).isoformat(timespec="seconds"), last_exit
        )
        try:
            await asyncio.wait_for(
                channel.request(
                    "hello",
                    control_plane=to_json(self.info),
                    supervisor=to_json(SupervisorInfo(os.getpid(), self.adopted)),
                    units=[u.status().to_json() for u in self.units.values()],
                ),
                HELLO_TIMEOUT_S,
            )
            if not self._started_mesh:
                facts = await channel.request("start_mesh")
                self._started_mesh = True
                self._announce(facts)
            else:
                await asyncio.wait_for(channel.request("resume"), RESUME_TIMEOUT_S)
            watching = asyncio.create_task(self._watch_liveness(channel, child), name="control plane liveness")
            try:
                await reading
            finally:
                watching.cancel()
        finally:
            self.channel = None
            reading.cancel()
            await channel.close()

    async def _watch_liveness(self, channel: Channel, child: Child) -> None:
        """Ask the control plane every `PING_EVERY_S` for an answer within `PING_TIMEOUT_S`. One
        that does not answer (stopped, hung) is reported, the admin API is answered 503 for it,
        and past `control_plane_unresponsive_restart_s` it is killed (and restarted like one that
        died). The data plane serves on meanwhile."""
        silent_since: float | None = None
        limit = self.settings.control_plane_unresponsive_restart_s
        while True:
            await asyncio.sleep(PING_EVERY_S)
            try:
                await asyncio.wait_for(channel.request("ping"), PING_TIMEOUT_S)
            except TimeoutError:
                now = time.monotonic()
                if silent_since is None:
                    silent_since = now - PING_TIMEOUT_S
                    log.warning("the control plane (pid %s) does not answer; the admin API answers 503", child.pid)
                    self.say(
                        f"interstate: the control plane (pid {child.pid}) does not answer; "
                        f"restarting it if it is still silent after {limit:g}s (the data plane serves on)"
                    )
                silent = now - silent_since
                self.away.start(
                    f"the control plane (pid {child.pid}) has not answered for {silent:.0f}s; it is restarted "
                    f"after {limit:g}s; the data plane serves on; try again in a moment"
                )
                if silent >= limit:
                    log.error("the control plane did not answer for %.0fs: restarting it", silent)
                    self._silenced = f"did not answer for {silent:.0f}s and was killed"
                    await child.kill()  # its channel ends, and keep_control_plane restarts it
                    return
                continue
            except InterstateError:
                return  # the channel is gone: keep_control_plane takes it from here
            if silent_since is not None:
                silent_since = None
                await self.away.stop()  # it accepts on the admin socket again itself
                log.warning("the control plane answers again")

    def _announce(self, facts: dict[str, Any]) -> None:
        host = self.settings.host
        ready = {
            "ingress": f"http://{host}:{self.settings.ingress_port}" if facts.get("ingress") else None,
            "admin": facts.get("admin"),
            "dashboard": f"{facts.get('admin')}/dashboard",
            "token_file": str(self.settings.run_dir / access.TOKEN_FILE),
            "xds": facts.get("xds"),
            "run_dir": str(self.settings.run_dir),
            "replicas": facts.get("replicas", 0),
            "supervisor_pid": os.getpid(),
            "adopted": self.adopted,
        }
        (self.settings.run_dir / "ready.json").write_text(json.dumps(ready, indent=1) + "\n")
        if self.adopted:
            self.say(f"interstate: adopted {len(self.adopted)} running unit(s): {', '.join(self.adopted)}")
        token = access.read_token(self.settings.run_dir / access.TOKEN_FILE)
        sign_in = f"{ready['dashboard']}?{access.LOGIN_PARAM}={access.login_code(token, access.READY_LINK_TTL_S)}"
        self.say(
            f"interstate: mesh ready ingress={ready['ingress']} admin={ready['admin']} "
            f"dashboard={sign_in} replicas={ready['replicas']} logs={self.settings.run_dir / 'logs'}"
        )
        self.ready.set()

    # ---- requests from the control plane ------------------------------------------------------
    async def _handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "start":
            return {"unit": (await self._start(UnitSpec.from_json(args["spec"]))).to_json()}
        names = [str(n) for n in args.get("names", [])]
        if op == "drain":
            units = [self.units[n] for n in names if n in self.units]
            await asyncio.gather(*(u.drain(float(args.get("timeout", self.settings.drain_timeout_s))) for u in units))
            return {}
        if op == "stop":
            await self._stop(names)
            return {}
        raise PermanentError(f"unknown request {op!r}")

    def _listen(self, event: str, args: dict[str, Any]) -> None:
        log.warning("unexpected event from the control plane: %s", event)

    async def _start(self, spec: UnitSpec) -> UnitStatus:
        if self.stopping:
            raise TemporaryError(f"not starting {spec.name}: the mesh is stopping")
        if spec.name in self.units:
            raise PermanentError(f"{spec.name} is already running")
        unit = Unit(spec, self.settings, self.envoy_binary, self.http, self._report)
        self.units[spec.name] = unit
        task = asyncio.current_task()
        if task is not None:
            self._starting.add(task)
        try:
            await unit.start()
        except BaseException:
            await unit.stop()
            self.units.pop(spec.name, None)
            self._report(unit.status())  # STOPPED: whichever control plane is there forgets it
            raise
        finally:
            if task is not None:
                self._starting.discard(task)
            self._save()
        return unit.status()

    async def _stop(self, names: list[str]) -> None:
        units = [self.units[n] for n in names if n in self.units]
        await asyncio.gather(*(u.stop() for u in units), return_exceptions=True)
        for unit in units:
            self.units.pop(unit.name, None)
            self._report(unit.status())  # STOPPED
        self._save()

    def _report(self, status: UnitStatus) -> None:
        self._save()  # a new pid after a restart, or a new state
        if self.channel is not None:
            self.channel.notify("unit", unit=status.to_json())

    # ---- stopping --------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Ask the control plane to stop the mesh (drain the ingress, drain and stop replicas,
        record mesh.stop); stop whatever is left ourselves; then the control plane."""
        self.stopping = True
        channel = self.channel
        if channel is not None and self._started_mesh:
            try:
                await asyncio.wait_for(channel.request("shutdown"), SHUTDOWN_TIMEOUT_S)
            except (InterstateError, TimeoutError) as exc:
                log.error("the control plane did not stop the mesh (%s); stopping it here", exc)
        elif self._started_mesh and self.units:
            # the control plane is away: nobody can withdraw endpoints; stop what runs
            stopped = sorted(n for n in self.units if n != "ingress")
            audit.AuditLog(self.settings.run_dir / audit.FILE_NAME).record(
                audit.UP, "mesh.stop", [], {"replicas_stopped": stopped, "control_plane": "away"}
            )
        if self._starting:  # starts already under way finish (bounded), then stop with the rest
            await asyncio.wait(set(self._starting), timeout=self.settings.ready_timeout_s)
        ingress = [n for n in self.units if n == "ingress"]
        for name in ingress:
            await self.units[name].drain(min(self.settings.drain_timeout_s, 2.0))
        await self._stop(list(self.units))
        if self.control_plane is not None:
            await self.control_plane.stop(self.settings.stop_timeout_s)
        await self.away.stop()
        self.admin_sock.close()
        (self.settings.run_dir / "ready.json").unlink(missing_ok=True)
        adoption.forget(self.settings.run_dir)
        await self.http.aclose()


async def run(settings: Settings, say: Callable[[str], None], found: list[adoption.Found] | None = None) -> None:
    """`interstate up` after validation: adopt the units in `found` (left by a killed `up`),
    supervise until SIGINT/SIGTERM, then stop everything."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    adoption.save_supervisor(settings.run_dir)
    supervisor = Supervisor(settings, say)
    supervisor.adopt(found or [])
    keeping = asyncio.create_task(supervisor.keep_control_plane(), name="control plane")
    try:
        ready = asyncio.create_task(supervisor.ready.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if supervisor.failed is not None:
            raise supervisor.failed
        if not ready.done():
            say("interstate: stopping before the mesh was ready")
            ready.cancel()
            return
        stopping.cancel()
        await stop.wait()
        say("interstate: stopping")
    finally:
        await supervisor.shutdown()  # a second Ctrl-C meanwhile changes nothing: we are stopping
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if supervisor.failed is None:
            say("interstate: stopped")
