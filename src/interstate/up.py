"""`interstate up`: fix the mesh's ports, save its settings and config in the run folder, then
hand over to the standalone supervisor until Ctrl-C or SIGTERM. An edge like the CLI (which
alone calls it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from interstate.errors import PermanentError
from interstate.model.index import MeshConfig
from interstate.settings import Settings
from interstate.standalone import state, supervisor
from interstate.standalone.ports import PortAllocator
from interstate.standalone.process import port_is_free


def fix_ports(settings: Settings) -> Settings:
    """Every port the mesh keeps for its whole life, chosen now: those given must be free, 0
    becomes a free one. A restarted control plane listens where the first one did."""
    for what, port in (("xDS", settings.xds_port), ("ingress", settings.ingress_port), ("admin", settings.admin_port)):
        if port and not port_is_free(settings.host, port):
            raise PermanentError(
                f"{what} port {port} on {settings.host} is in use; choose another "
                f"(--{what.lower()}-port) or let interstate pick free ports (--auto-ports)"
            )
    ports = PortAllocator(settings.host)
    return replace(
        settings,
        xds_port=ports.take(settings.xds_port),
        ingress_port=ports.take(settings.ingress_port),
        admin_port=ports.take(settings.admin_port),
    )


async def run(settings: Settings, config: MeshConfig, say: Callable[[str], None]) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings = fix_ports(settings)
    state.save_settings(settings)
    state.save_config(settings.run_dir, config)
    await supervisor.run(settings, say)
