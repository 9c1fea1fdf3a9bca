"""`interstate up`: start the control plane, admin API, every replica and the ingress; print one
ready line; on SIGINT/SIGTERM drain and stop every child. An edge like the CLI (which alone
calls it): it wires the standalone supervisor to the admin API."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable

from interstate.api.admin import AdminServer, create_app
from interstate.model.index import MeshConfig
from interstate.settings import Settings
from interstate.standalone.supervisor import Supervisor

log = logging.getLogger(__name__)


async def run(settings: Settings, config: MeshConfig, say: Callable[[str], None]) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(settings, config)
    admin: AdminServer | None = None
    try:
        await supervisor.start_control_plane()
        admin = AdminServer(create_app(supervisor), settings.host, settings.admin_port)
        await admin.start()
        starting = asyncio.create_task(supervisor.start_mesh())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            say("interstate: stopping before the mesh was ready")
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return
        stopping.cancel()
        starting.result()
        ready = {
            "ingress": f"http://{settings.host}:{supervisor.ingress_port}" if supervisor.ingress else None,
            "admin": admin.url,
            "dashboard": admin.url + "/dashboard",
            "xds": f"{settings.host}:{supervisor.xds_port}",
            "run_dir": str(settings.run_dir),
            "replicas": sum(len(r) for r in supervisor.replicas.values()),
        }
        (settings.run_dir / "ready.json").write_text(json.dumps(ready, indent=1) + "\n")
        say(
            f"interstate: mesh ready ingress={ready['ingress']} admin={ready['admin']} "
            f"dashboard={ready['dashboard']} replicas={ready['replicas']} logs={settings.run_dir / 'logs'}"
        )
        await stop.wait()
        say("interstate: stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if admin is not None:
            await admin.stop()
        await supervisor.shutdown()
        say("interstate: stopped")
