"""What the standalone supervisor and its control plane say to each other, and how.

The two processes share a private socket pair (no port, nothing another user can reach). Each
message is one JSON line:

    {"id": 7, "op": "start", "args": {...}}        a request; answered by exactly one reply
    {"re": 7, "ok": {...}}  /  {"re": 7, "error": "...", "temporary": true}
    {"event": "unit", "args": {...}}               a notification; no reply

The control plane asks the supervisor to `start` a unit (an app and/or its Envoy, described
entirely by a `UnitSpec` the control plane computed: ports, command, bootstrap file), to `drain`
and to `stop` units. The supervisor tells the control plane what runs (`hello` at each start of
the control plane, with every unit; `unit` events when one changes state) and asks it to
`shutdown`. Either side sees the other go away as the end of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from interstate.compile import Proxy, Role
from interstate.core.status import ReplicaState
from interstate.errors import ControlPlaneAway, InterstateError, PermanentError, TemporaryError

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024


# ---- what runs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppSpec:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    log: str
    port: int  # where the app listens (127.0.0.1)
    probe_path: str | None  # readiness: HTTP GET of this path, or a TCP connect when None
    ready_timeout_s: float


@dataclass(frozen=True)
class EnvoySpec:
    bootstrap: str  # the bootstrap file the control plane wrote
    admin: str  # the Unix socket its admin interface listens on (`telemetry.envoy_admin`)
    log: str  # Envoy's own output (its messages)
    outlier_log: str
    access_log: str = ""  # the access log Envoy writes (`Proxy.access_log`); "" from an older mesh

    @property
    def requests_log(self) -> str:
        """Where this Envoy's access-log lines are (before rotation by file: in its output)."""
        return self.access_log or self.log


@dataclass(frozen=True)
class UnitSpec:
    """One replica (app + side-car), or the ingress (Envoy only)."""

    name: str  # "stats-0", "ingress"
    service: str  # "" for the ingress
    index: int
    version: str
    template: str  # digest of the workload's template: replicas of the same one are interchangeable
    proxy: Proxy | None
    app: AppSpec | None
    envoy: EnvoySpec | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnitSpec:
        proxy = data.get("proxy")
        app = data.get("app")
        envoy = data.get("envoy")
        return cls(
            name=data["name"],
            service=data["service"],
            index=int(data["index"]),
            version=data["version"],
            template=data["template"],
            proxy=None
            if proxy is None
            else Proxy(
                **(proxy | {"role": Role(proxy["role"]), "host_addresses": tuple(proxy.get("host_addresses", ()))})
            ),
            app=None if app is None else AppSpec(**(app | {"argv": tuple(app["argv"])})),
            envoy=None if envoy is None else EnvoySpec(**_current_envoy(envoy)),
        )

    @property
    def admin(self) -> str | None:
        """Its Envoy's admin socket (`telemetry.envoy_admin`); None when it has no Envoy."""
        return None if self.envoy is None else self.envoy.admin

    def ports(self) -> dict[int, str]:
        """The TCP ports it binds, each with its owner in words ("stats-0's app")."""
        out = {} if self.app is None else {self.app.port: f"{self.name}'s app"}
        if self.proxy is not None:
            for port, what in (
                (self.proxy.inbound_port, "side-car (inbound)"),
                (self.proxy.outbound_port, "side-car (outbound)"),
                (self.proxy.ingress_port, "ingress"),
            ):
                if port:
                    out[port] = "the ingress" if what == "ingress" else f"{self.name}'s {what}"
        return out


def _current_envoy(data: dict[str, Any]) -> dict[str, Any]:
    """An EnvoySpec's fields as saved, from this version or an older one (whose Envoys had a TCP
    admin port: they get no socket, so adoption finds them unreachable and replaces them)."""
    out = {k: v for k, v in data.items() if k != "admin_port"}
    out.setdefault("admin", "")
    return out


@dataclass(frozen=True)
class UnitStatus:
    """A unit as the supervisor runs it."""

    spec: UnitSpec
    state: ReplicaState = ReplicaState.STARTING
    app_pid: int | None = None
    envoy_pid: int | None = None
    restarts: dict[str, int] = field(default_factory=dict)  # "app" / "envoy" -> times restarted

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "state": self.state.value,
            "app_pid": self.app_pid,
            "envoy_pid": self.envoy_pid,
            "restarts": dict(self.restarts),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnitStatus:
        return cls(
            UnitSpec.from_json(data["spec"]),
            ReplicaState(data["state"]),
            data.get("app_pid"),
            data.get("envoy_pid"),
            dict(data.get("restarts", {})),
        )

    def with_state(self, state: ReplicaState) -> UnitStatus:
        return replace(self, state=state)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def admin(self) -> str | None:
        return self.spec.admin


# ---- the channel -------------------------------------------------------------------------------
Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Listener = Callable[[str, dict[str, Any]], None]


class Channel:
    """Requests with replies, and events, both ways over one stream. Requests from the peer are
    handled concurrently (a `start` takes seconds); a request raising an InterstateError is
    answered with its message (and whether retrying may help), anything else with "internal"."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler, listen: Listener
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handle = handle
        self._listen = listen
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    @classmethod
    async def over_socket(cls, sock: Any, handle: Handler, listen: Listener) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer, handle, listen)

    async def run(self) -> None:
        """Read until the peer goes away; then fail every request still waiting for a reply."""
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    return
                try:
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError("not an object")
                    self._dispatch(message)
                except (ValueError, TypeError, KeyError) as exc:
                    log.error("unreadable message from the peer (%s): %r", exc, line[:200])
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.warning("channel to the peer broke: %s", exc)
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ControlPlaneAway("the other process went away before it answered"))
            self._pending.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "re" in message:
            future = self._pending.pop(int(message["re"]), None)
            if future is None or future.done():
                return
            if "error" in message:
                kind = TemporaryError if message.get("temporary") else PermanentError
                future.set_exception(kind(str(message["error"])))
            else:
                future.set_result(dict(message.get("ok") or {}))
        elif "event" in message:
            try:
                self._listen(str(message["event"]), dict(message.get("args") or {}))
            except Exception:
                log.exception("handling event %s failed", message.get("event"))
        elif "op" in message:
            task = asyncio.create_task(self._answer(int(message["id"]), str(message["op"]), message.get("args") or {}))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, id_: int, op: str, args: dict[str, Any]) -> None:
        try:
            result = await self._handle(op, args)
            reply: dict[str, Any] = {"re": id_, "ok": result}
        except InterstateError as exc:
            reply = {"re": id_, "error": str(exc), "temporary": isinstance(exc, TemporaryError)}
        except Exception as exc:
            log.exception("request %s failed", op)
            reply = {"re": id_, "error": f"internal error: {exc!r}", "temporary": False}
        await self._send(reply)

    def _write(self, message: dict[str, Any]) -> bool:
        """Queue one message (in call order); False when the peer is gone."""
        if self.closed.is_set() or self._writer.is_closing():
            return False
        self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        return True

    async def _send(self, message: dict[str, Any]) -> None:
        if self._write(message):
            try:
                await self._writer.drain()
            except (ConnectionError, RuntimeError) as exc:
                log.warning("cannot write to the peer: %s", exc)

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        if self.closed.is_set():
            raise ControlPlaneAway("the other process is not connected")
        id_ = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        if not self._write({"id": id_, "op": op, "args": args}):
            self._pending.pop(id_, None)
            raise ControlPlaneAway("the other process is not connected")
        try:
            return await future
        finally:
            self._pending.pop(id_, None)

    def notify(self, event: str, **args: Any) -> None:
        self._write({"event": event, "args": args})

    async def close(self) -> None:
        """Close the stream. Requests the peer made are *not* cancelled: a drain or stop that
        was asked for finishes (its reply is dropped), so no unit is left half-stopped."""
        with contextlib.suppress(Exception):
            self._writer.close()
            await self._writer.wait_closed()
