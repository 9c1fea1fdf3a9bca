"""Checks that only this machine can answer: do the workloads' folders and programs exist?

Run by `interstate up` before anything starts and by the supervisor before an `apply`, so a
typo in `workingDir` or `command` is an error naming the field, not a crash half-way through.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from interstate.errors import ConfigError, Issue
from interstate.model.index import MeshConfig
from interstate.model.workload import Workload


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
