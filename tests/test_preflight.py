"""Checks of the machine the mesh runs on: missing folders and programs are user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from interstate.config.loader import decode_sources
from interstate.errors import ConfigError
from interstate.standalone import preflight

WORKLOAD = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{name: {name}}}
spec:
  port: 8080
  run: {{workingDir: {folder}, command: [{program}, app.py]}}
"""


def mesh(*workloads: tuple[str, str, str]) -> str:
    return "---\n".join(WORKLOAD.format(name=n, folder=f, program=p) for n, f, p in workloads)


def test_existing_folders_and_programs_pass(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "run.sh").write_text("#!/bin/sh\n")
    config = decode_sources(
        {"mesh.yaml": mesh(("a", "apps", "python"), ("b", "apps", "sh"), ("c", "apps", "./run.sh"))}
    )
    preflight.check(config, tmp_path)


def test_missing_folder_and_programs_are_reported_with_file_document_and_field(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    text = mesh(("a", "nope", "python"), ("b", "apps", "no-such-program-here"), ("c", "apps", "./missing.sh"))
    config = decode_sources({"mesh.yaml": text})
    with pytest.raises(ConfigError) as caught:
        preflight.check(config, tmp_path)
    lines = [str(i) for i in caught.value.issues]
    assert lines == [
        f"mesh.yaml: document 1 (Workload a): spec.run.workingDir: {tmp_path / 'nope'} is not a folder "
        f"(relative paths start at {tmp_path})",
        "mesh.yaml: document 2 (Workload b): spec.run.command[0]: 'no-such-program-here' is not a program on PATH",
        f"mesh.yaml: document 3 (Workload c): spec.run.command[0]: './missing.sh' does not exist "
        f"(looked for {tmp_path / 'apps' / './missing.sh'})",
    ]
