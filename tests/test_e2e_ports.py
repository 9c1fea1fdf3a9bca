"""End-to-end: every TCP port of a running mesh has one owner (issue 25, item 1).

A workload's `localPorts` entry once bound a side-car beside the ingress with SO_REUSEPORT and
took half the public traffic raw. Now a local port someone else owns (the ingress, a side-car's
inbound port, a program outside the mesh) is refused at `apply` naming both owners, and the
mesh is unchanged; a free one works; and after a series of applies and scales every listening
socket of the mesh's processes belongs to one process, but a local port, which the caller's
replicas share.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections import defaultdict
from pathlib import Path

import httpx
import psutil
import pytest
from mesh_runner import MeshRun, cli, running_mesh, wait_for

pytestmark = pytest.mark.e2e

REDIS = '[redis-server, --port, $(PORT), --bind, 127.0.0.1, --save, "", --appendonly, "no"]'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_cache(mesh: Path, local: int, cache_replicas: int = 1) -> None:
    """The example plus a tcp service `cache` (redis) that results calls on local port `local`."""
    (mesh / "cache.yaml").write_text(
        f"""apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{ name: cache }}
spec:
  port: 6379
  replicas: {cache_replicas}
  protocol: tcp
  run: {{ command: {REDIS} }}
"""
    )
    results = mesh / "results.yaml"
    lines = [line for line in results.read_text().splitlines() if not line.startswith("  localPorts:")]
    calls = lines.index(next(line for line in lines if line.startswith("  calls:")))
    lines[calls : calls + 1] = ["  calls: [stats, cache]", f"  localPorts: {{ cache: {local} }}"]
    results.write_text("\n".join(lines) + "\n")


def public_answers(mesh: MeshRun, n: int = 40) -> int:
    """How many of `n` public requests got results' own answer (tallies with candidates)."""
    good = 0
    with httpx.Client(timeout=10, trust_env=False) as client:
        for _ in range(n):
            response = client.get(mesh.ingress + "/results")
            good += response.status_code == 200 and "candidates" in response.json()
    return good


def listeners(mesh: MeshRun) -> dict[int, dict[str, set[int]]]:
    """Every TCP port a process of the mesh listens on -> its listening sockets (by inode) -> the
    pids holding each (a socket passed to a child, as the admin API's is, is still one socket)."""
    out: dict[int, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for proc in [psutil.Process(mesh.proc.pid), *mesh.descendants()]:
        try:
            for c in proc.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    out[c.laddr.port][os.readlink(f"/proc/{proc.pid}/fd/{c.fd}")].add(proc.pid)
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return out


def assert_one_owner_per_port(mesh: MeshRun, local: int) -> None:
    status = mesh.status()
    results_envoys = {r["sidecar"]["pid"] for r in status["services"]["results"]["replicas"]}
    held = listeners(mesh)
    sharing = set().union(*held[local].values())
    assert sharing == results_envoys  # the local port: shared by results' side-cars, and only them
    shared = {port: sockets for port, sockets in held.items() if len(sockets) > 1 and port != local}
    assert shared == {}
    assert len(held[int(mesh.ingress.rsplit(":", 1)[1])]) == 1


def redis_ping(local: int) -> str:
    done = subprocess.run(["redis-cli", "-p", str(local), "PING"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip()


def test_a_local_port_with_another_owner_is_refused_and_ports_keep_one_owner(mesh_copy: Path, tmp_path: Path) -> None:
    with running_mesh(mesh_copy, tmp_path / "run") as mesh:
        ingress_port = int(mesh.ingress.rsplit(":", 1)[1])
        inbound = mesh.status()["services"]["stats"]["replicas"][0]["sidecar"]["inbound"]
        versions = {r["name"]: r["xds"] for s in mesh.status()["services"].values() for r in s["replicas"]}
        with socket.socket() as outsider:  # a program outside the mesh
            outsider.bind(("127.0.0.1", 0))
            outsider.listen()
            foreign = outsider.getsockname()[1]
            for port, owner in (
                (ingress_port, "the ingress"),
                (inbound, "stats-0's side-car (inbound)"),
                (foreign, "a program outside the mesh"),
            ):
                with_cache(mesh_copy, port)
                refused = cli("apply", str(mesh_copy), "--admin", mesh.admin)
                assert refused.returncode == 1, refused.stdout
                assert "document 1 (Workload results): spec.localPorts.cache: port" in refused.stderr
                assert f"port {port} is" in refused.stderr and owner in refused.stderr
                assert public_answers(mesh) == 40  # nothing took a share of the ingress
        now = {r["name"]: r["xds"] for s in mesh.status()["services"].values() for r in s["replicas"]}
        assert "cache" not in mesh.status()["services"] and now.keys() == versions.keys()
        assert all(now[n]["types"]["LDS"]["acked"] == versions[n]["types"]["LDS"]["acked"] for n in now)

        local = free_port()
        with_cache(mesh_copy, local)
        applied = cli("apply", str(mesh_copy), "--admin", mesh.admin)
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: redis_ping(local) == "PONG", what="redis through results' local port")
        assert_one_owner_per_port(mesh, local)
        for replicas in (3, 1, 2):
            scaled = cli("scale", "stats", str(replicas), "--admin", mesh.admin)
            assert scaled.returncode == 0, scaled.stderr
            assert_one_owner_per_port(mesh, local)
        with_cache(mesh_copy, local, cache_replicas=2)
        assert cli("apply", str(mesh_copy), "--admin", mesh.admin).returncode == 0
        assert_one_owner_per_port(mesh, local)
        assert redis_ping(local) == "PONG" and public_answers(mesh) == 40
