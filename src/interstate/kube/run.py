"""`interstate controller`: the core with the Kubernetes source, as one process until SIGTERM.

Configured in a pod from its service-account mount (`ApiSettings.in_cluster`) or, for
development and controllers outside the cluster, from a kubeconfig. It watches the cluster
(`kube.controller`), serves xDS, and, when it holds the Lease (several replicas), writes the
mesh resources' status. SIGTERM or SIGINT stops it cleanly: the Lease is handed back, so
another replica takes over at once. Called by the CLI only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from interstate.core.identity import IdentitySettings
from interstate.core.plane import ControlPlane
from interstate.kube.controller import Controller, ControllerSettings

log = logging.getLogger(__name__)


async def serve(settings: ControllerSettings, identity: IdentitySettings, audit_path: Path) -> None:
    """Run the controller until SIGTERM or SIGINT."""
    core = ControlPlane(identity, audit_path)
    controller = Controller(settings, core)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await controller.start()
    log.info("interstate controller: watching %s as %s", settings.api.server, settings.identity)
    try:
        await stop.wait()
    finally:
        log.info("interstate controller: stopping")
        await controller.stop()
