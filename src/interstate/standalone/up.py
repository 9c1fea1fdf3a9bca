"""`interstate up`: fix the mesh's ports, save its settings and config in the run folder, then
hand over to the standalone supervisor until Ctrl-C or SIGTERM. Standalone logic, called only
by the CLI.

When an earlier `interstate up` on the same run folder was killed, its apps and Envoys are still
serving: this one adopts them (`standalone.adoption`), keeping the ports the mesh was started
with, and the mesh files given now win (units that no longer fit them are replaced, autoscaled
counts are kept within their bounds). Adoption is refused, and what is left is stopped and
started afresh, when the CA settings changed (the Envoys' bootstrap certificates would no longer
be trusted) or the saved settings cannot be read.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import replace

from interstate.core import access
from interstate.errors import ConfigError, PermanentError
from interstate.model.index import MeshConfig
from interstate.settings import Settings
from interstate.standalone import adoption, budget, preflight, state, supervisor
from interstate.standalone.autoscaler import keep_autoscaled
from interstate.standalone.ports import PortAllocator, mesh_ports
from interstate.standalone.process import port_is_free

log = logging.getLogger(__name__)


def fix_ports(settings: Settings, config: MeshConfig) -> Settings:
    """Every port the mesh keeps for its whole life, chosen now: those given must be free, 0
    becomes a free one (never one a workload declares in `localPorts`). A restarted control
    plane listens where the first one did."""
    for what, port in (("xDS", settings.xds_port), ("ingress", settings.ingress_port), ("admin", settings.admin_port)):
        if port and not port_is_free(settings.host, port):
            raise PermanentError(
                f"{what} port {port} on {settings.host} is in use; choose another "
                f"(--{what.lower()}-port) or let interstate pick free ports (--auto-ports)"
            )
    ports = PortAllocator(settings.host)
    ports.declare(config)
    return replace(
        settings,
        xds_port=ports.take(settings.xds_port),
        ingress_port=ports.take(settings.ingress_port),
        admin_port=ports.take(settings.admin_port),
    )


def take_over(settings: Settings, config: MeshConfig) -> tuple[Settings, MeshConfig, list[adoption.Found]]:
    """What to start from: fresh settings, or those of the mesh a killed `up` left running."""
    found = adoption.survey(settings.run_dir)
    if not found:
        return fresh(settings, config), config, []
    try:
        saved = state.load_settings(settings.run_dir)
        running = state.load_config(settings.run_dir)
    except (OSError, ValueError, TypeError, ConfigError) as exc:
        return _start_over(settings, config, found, f"its saved state cannot be read ({exc})")
    if not saved.run_id:
        return _start_over(settings, config, found, "its Envoys' bootstrap certificates are bound to no run")
    if saved.identity() != replace(settings, run_id=saved.run_id).identity():
        return _start_over(settings, config, found, "the CA settings changed")
    kept = replace(
        settings,
        xds_port=saved.xds_port,
        ingress_port=saved.ingress_port,
        admin_port=saved.admin_port,
        run_id=saved.run_id,  # the run goes on: its Envoys' bootstrap certificates stay good
    )
    return kept, keep_autoscaled(running, config), found


def _start_over(
    settings: Settings, config: MeshConfig, found: list[adoption.Found], why: str
) -> tuple[Settings, MeshConfig, list[adoption.Found]]:
    log.warning("not adopting the mesh left running in %s: %s; stopping it", settings.run_dir, why)
    for item in found:
        adoption.terminate(item.pids, settings.stop_timeout_s)
    adoption.forget(settings.run_dir)
    return fresh(settings, config), config, []


def fresh(settings: Settings, config: MeshConfig) -> Settings:
    """A new run: its ports fixed, and a new run ID, so bootstrap certificates that an earlier
    run issued on the same CA are refused by this one's xDS server (`core.identity`)."""
    return replace(fix_ports(settings, config), run_id=secrets.token_hex(8))


async def run(settings: Settings, config: MeshConfig, say: Callable[[str], None]) -> None:
    # What the mesh writes (tokens, keys, bootstraps, logs, the audit trail, admin sockets) is
    # its own user's alone: every process but the apps writes with umask 077, in a 0700 folder.
    settings = replace(settings, app_umask=os.umask(0o077))
    settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.run_dir, 0o700)
    other = adoption.live_supervisor(settings.run_dir)
    if other is not None:
        raise PermanentError(
            f"a mesh already runs from {settings.run_dir} (interstate up, pid {other}); stop it first "
            f"(`interstate down --run-dir {settings.run_dir}`) or use another --run-dir"
        )
    settings, config, found = take_over(settings, config)
    # a local port on the ingress's, say, or held by another program (not by the units adopted)
    preflight.check_ports(config, mesh_ports(settings), host=None if found else settings.host)
    budget.check(config, settings.max_replicas or budget.derived())
    access.create_token(settings.run_dir)  # a new admin token for every start (README "Admin API")
    state.save_settings(settings)
    state.save_config(settings.run_dir, config)
    await supervisor.run(settings, say, found)
