"""The standalone control-plane process: the core, the standalone source, the admin API (an edge:
it wires them together, as `up` wires the supervisor).

Started (and restarted, when it dies) by `standalone.supervisor` as
`python -m interstate.controlplane RUN_DIR FD LOG_LEVEL ADMIN_FD`: FD is its end of a private
socket pair to the supervisor, ADMIN_FD the admin API's listening socket (the supervisor holds it
for the mesh's life). It reads its settings and the mesh config from the run folder
(`standalone.state`), and answers the supervisor:
- `hello` (every start): adopt the units the supervisor runs, start the core (CA, ADS on the
  mesh's fixed xDS port) and the admin API on its fixed port;
- `start_mesh` (first start only): start every replica and the ingress, answer with the ready facts;
- `resume` (after a restart): serve the same snapshots (same content, same versions: no Envoy
  sees a change), record the restart in the audit trail, then carry on;
- `shutdown`: stop the mesh's units and itself;
- `ping`: answered at once (the supervisor's liveness check: one that goes unanswered gets the
  admin API answered 503 for it, and past its limit a restart).
It exits when the supervisor goes away. Calls core, standalone.mesh and api.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from interstate import audit
from interstate.api.admin import AdminServer, create_app
from interstate.core import access
from interstate.core.plane import ControlPlane
from interstate.core.status import ControlPlaneInfo, SupervisorInfo
from interstate.errors import InterstateError, PermanentError
from interstate.model.index import MeshIndex
from interstate.standalone import state
from interstate.standalone.mesh import StandaloneMesh
from interstate.standalone.protocol import Channel, UnitSpec, UnitStatus

log = logging.getLogger(__name__)


class RemoteRunner:
    """The supervisor, as `standalone.mesh.UnitRunner`, over the channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def start(self, spec: UnitSpec) -> UnitStatus:
        return UnitStatus.from_json((await self.channel.request("start", spec=spec.to_json()))["unit"])

    async def drain(self, names: list[str], timeout: float) -> None:
        await self.channel.request("drain", names=names, timeout=timeout)

    async def stop(self, names: list[str]) -> None:
        await self.channel.request("stop", names=names)


class ControlPlaneProcess:
    def __init__(self, run_dir: Path, admin_fd: int) -> None:
        self.settings = state.load_settings(run_dir)
        self.admin_fd = admin_fd  # the admin port, bound and held by the supervisor
        self.core = ControlPlane(self.settings.identity(), run_dir / audit.FILE_NAME)
        self.mesh: StandaloneMesh | None = None
        self.admin: AdminServer | None = None
        self.done = asyncio.Event()
        self.channel: Channel | None = None

    async def handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "ping":  # the supervisor's liveness check: an answer is all it wants
            return {}
        if op == "hello":
            return await self._hello(args)
        mesh = self.mesh
        if mesh is None:
            raise PermanentError(f"{op}: the control plane has not started")
        if op == "start_mesh":
            facts = await mesh.start_mesh()
            return facts | {
                "admin": self.admin.url if self.admin else None,
                "xds": f"{self.settings.host}:{self.core.port}",
            }
        if op == "resume":
            await mesh.resume()
            return {}
        if op == "shutdown":
            stopped = await mesh.shutdown()
            asyncio.get_running_loop().call_later(0.2, self.done.set)  # after the reply went out
            return {"stopped": stopped}
        raise PermanentError(f"unknown request {op!r}")

    def listen(self, event: str, args: dict[str, Any]) -> None:
        if event == "unit" and self.mesh is not None:
            self.mesh.unit_changed(UnitStatus.from_json(args["unit"]))

    async def _hello(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.channel is not None
        info = ControlPlaneInfo.from_json(args["control_plane"])
        config = state.load_config(self.settings.run_dir)
        mesh = StandaloneMesh(self.settings, config, self.core, RemoteRunner(self.channel), info)
        mesh.adopt([UnitStatus.from_json(u) for u in args.get("units", [])])
        mesh.supervisor = SupervisorInfo.from_json(args["supervisor"])
        self.mesh = mesh  # from now on unit events are taken (pushed once the core serves)
        await self.core.start(self.settings.host, self.settings.xds_port, MeshIndex(config).mesh.trust_domain)
        token_file = self.settings.run_dir / access.TOKEN_FILE
        gate = access.Gate(access.read_token(token_file), access.token_actor(token_file))
        self.admin = AdminServer(create_app(mesh), socket.socket(fileno=self.admin_fd), gate)
        await self.admin.start()
        return {"admin": self.admin.url, "xds": self.core.port}

    async def run(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        self.channel = await Channel.over_socket(sock, self.handle, self.listen)
        reading = asyncio.create_task(self.channel.run())
        finished = asyncio.create_task(self.done.wait())
        await asyncio.wait({reading, finished}, return_when=asyncio.FIRST_COMPLETED)
        reading.cancel()
        if self.admin is not None:
            await self.admin.stop()
        await self.core.stop()
        await self.channel.close()


def main() -> None:
    level = sys.argv[3] if len(sys.argv) > 3 else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir, fd, admin_fd = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
    try:
        asyncio.run(ControlPlaneProcess(run_dir, admin_fd).run(fd))
    except InterstateError as exc:
        log.error("control plane stopped: %s", exc)
        sys.exit(3)


if __name__ == "__main__":
    main()
