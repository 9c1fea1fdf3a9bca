"""Checks that only this machine can answer: do the workloads' folders and programs exist, and
is every port a workload declares free of another owner?

Run by `interstate up` before anything starts and by the control plane before an `apply`, so a
typo in `workingDir` or `command`, or a `localPorts` entry on the ingress's port, is an error
naming the field (and the port's owner), not a crash or a hijack half-way through.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from interstate.errors import ConfigError, Issue
from interstate.model.external_service import ExternalService, host_own_address
from interstate.model.index import MeshConfig
from interstate.model.workload import Workload
from interstate.standalone.ports import local_ports
from interstate.standalone.process import port_is_free


def check(config: MeshConfig, mesh_dir: Path) -> None:
    issues: list[Issue] = []
    for workload in config.of_kind(Workload):
        file, document = config.origin(workload)

        def issue(field: str, message: str, w: Workload = workload, f: str = file, d: int = document) -> None:
            issues.append(Issue(f, d, w.ref, field, message))

        folder = mesh_dir / (workload.spec.runs().working_dir or ".")
        if not folder.is_dir():
            issue("spec.run.workingDir", f"{folder} is not a folder (relative paths start at {mesh_dir})")
            continue
        program = workload.spec.runs().command[0]
        if program in ("python", "python3"):
            continue  # this interpreter
        if "/" in program:
            path = Path(program) if Path(program).is_absolute() else folder / program
            if not path.is_file():
                issue("spec.run.command[0]", f"{program!r} does not exist (looked for {path})")
        elif shutil.which(program) is None:
            issue("spec.run.command[0]", f"{program!r} is not a program on PATH")
    if issues:
        raise ConfigError(issues)


def check_ports(
    config: MeshConfig, taken: Mapping[int, str], in_force: Mapping[int, str] | None = None, host: str | None = None
) -> None:
    """ConfigError for each local port of `config` that someone else owns in `taken` ({port:
    owner}: the mesh's own ports and its units'), naming both owners; with `host`, also for a
    new one (not in `in_force`, the local ports the running mesh binds) another program holds.
    And for an ExternalService on this host (`allowLoopback`) at a port the mesh owns."""
    declared = local_ports(config)
    running = in_force or {}
    issues = []
    for workload in config.of_kind(Workload):
        file, document = config.origin(workload)
        for service, port in sorted(workload.spec.local_ports.items()):
            other = taken.get(port)
            if other is not None and other != declared[port]:
                problem = f"port {port} is taken on this host by {other}; a port has one owner, so choose another"
            elif host is not None and running.get(port) != declared[port] and not port_is_free(host, port):
                problem = f"port {port} is in use on this host by a program outside the mesh; choose another"
            else:
                continue
            issues.append(Issue(file, document, workload.ref, f"spec.localPorts.{service}", problem))
    for external in config.of_kind(ExternalService):
        owner = taken.get(external.spec.port)
        if external.spec.allow_loopback and host_own_address(external.spec.address) and owner is not None:
            file, document = config.origin(external)
            message = (
                f"{external.spec.port} is taken on this host by {owner}; the mesh never forwards to a port it owns"
            )
            issues.append(Issue(file, document, external.ref, "spec.port", message))
    if issues:
        raise ConfigError(issues)
