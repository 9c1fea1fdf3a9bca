"""Checks of the machine the mesh runs on: missing folders and programs are user errors."""

from __future__ import annotations

import socket
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


TCP_CALLER = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{name: cache}}
spec: {{port: 6379, protocol: tcp, run: {{command: [redis-server]}}}}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{name: results}}
spec: {{port: 8080, calls: [cache], localPorts: {{cache: {port}}}, run: {{command: [python, app.py]}}}}
"""


def test_a_local_port_another_owns_is_refused_naming_both_owners() -> None:
    config = decode_sources({"mesh.yaml": TCP_CALLER.format(port=41000)})
    with pytest.raises(ConfigError) as caught:
        preflight.check_ports(config, {41000: "the ingress", 41001: "the admin API"})
    assert [str(i) for i in caught.value.issues] == [
        "mesh.yaml: document 2 (Workload results): spec.localPorts.cache: port 41000 is taken on this host by "
        "the ingress; a port has one owner, so choose another"
    ]
    preflight.check_ports(config, {41000: "results's spec.localPorts.cache"})  # its own: fine


def test_a_new_local_port_a_program_outside_the_mesh_holds_is_refused() -> None:
    with socket.socket() as outsider:
        outsider.bind(("127.0.0.1", 0))
        outsider.listen()
        port = outsider.getsockname()[1]
        config = decode_sources({"mesh.yaml": TCP_CALLER.format(port=port)})
        with pytest.raises(ConfigError, match=f"port {port} is in use on this host by a program outside the mesh"):
            preflight.check_ports(config, {}, host="127.0.0.1")
        # the running mesh's own side-cars hold a local port it already has: that is no conflict
        preflight.check_ports(config, {}, {port: "results's spec.localPorts.cache"}, host="127.0.0.1")


def test_an_external_service_on_this_host_may_not_point_at_a_port_the_mesh_owns() -> None:
    external = """\
apiVersion: mesh.codifyhq.io/v1
kind: ExternalService
metadata: {{name: ledger}}
spec: {{address: {address}, allowLoopback: true, port: 15000}}
"""
    with pytest.raises(ConfigError, match=r"ledger\): spec.port: 15000 is taken on this host by the admin API"):
        preflight.check_ports(
            decode_sources({"m.yaml": external.format(address="localhost")}), {15000: "the admin API"}
        )
    preflight.check_ports(
        decode_sources({"m.yaml": external.format(address="ledger.example")}), {15000: "the admin API"}
    )


def test_the_replica_budget_counts_the_whole_mesh_and_names_the_largest_workload() -> None:
    from interstate.standalone import budget

    text = TCP_CALLER.format(port=41000).replace("spec: {port: 8080,", "spec: {port: 8080, replicas: 300,")
    config = decode_sources({"mesh.yaml": text})
    budget.check(config, 301)  # 300 + 1 fit
    with pytest.raises(ConfigError) as caught:
        budget.check(config, 300)
    [issue] = caught.value.issues
    assert (issue.document, issue.resource, issue.field) == (2, "Workload results", "spec.replicas")
    assert issue.message.startswith(
        "the mesh would run 301 replicas in all (results 300, cache 1); this machine's replica budget is 300"
    )
    assert budget.clamp("results", 500, {"results": 300, "cache": 1}, 300) == 299  # the autoscaler's, lowered
    assert budget.derived(24 * 1024**3) == 460  # this machine's kind: 24 GiB
