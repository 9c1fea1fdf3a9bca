"""End-to-end: with 1-minute certificates (the shortest `up` allows), two rotations under
traffic lose no request. (The rotation loop's timing is tested on a virtual clock:
`test_rotation_loop.py`.)

Rotation is a push of new SDS secrets only: listeners and clusters keep their versions, open
connections stay up, and each Envoy's admin /certs shows the serial the control plane issued.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from mesh_runner import EXAMPLE, Load, MeshRun, envoy_admin, running_mesh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROTATIONS = 2


def serials_in_envoy(socket: str) -> set[str]:
    data = envoy_admin(socket, "/certs").json()
    return {
        cert["serial_number"].lower().lstrip("0")
        for entry in data.get("certificates", [])
        for cert in entry.get("cert_chain", [])
    }


def envoy_admins(mesh: MeshRun) -> dict[str, str]:
    status = mesh.status()
    out = {r["sidecar"]["node"]: r["sidecar"]["admin"] for s in status["services"].values() for r in s["replicas"]}
    out["ingress~ingress"] = status["ingress"]["admin"]
    return out


def listener_and_cluster_versions(mesh: MeshRun) -> dict[str, tuple[str, str]]:
    status = mesh.status()
    out = {}
    for service in status["services"].values():
        for replica in service["replicas"]:
            types = replica["xds"]["types"]
            out[replica["name"]] = (types["LDS"]["acked"], types["CDS"]["acked"])
    return out


def test_rotations_under_traffic_lose_no_request(tmp_path: Path) -> None:
    fixed = tmp_path / "mesh"  # a fixed set of proxies: without the autoscaler of results
    shutil.copytree(EXAMPLE, fixed)
    (fixed / "results-autoscale.yaml").unlink()
    with running_mesh(fixed, tmp_path / "run", "--cert-ttl", "1m") as mesh:
        versions_before = listener_and_cluster_versions(mesh)
        admins = envoy_admins(mesh)
        seen: dict[str, set[str]] = {node: set() for node in admins}
        with Load(mesh.ingress + "/results", workers=2, max_s=150) as load:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                certs = mesh.api("GET", "/certs", timeout=5).json()["certs"]
                for cert in certs:
                    seen[cert["node"]].add(cert["serial"].lstrip("0"))
                if all(len(s) >= ROTATIONS + 1 for s in seen.values()):
                    break
                time.sleep(1)
            time.sleep(2)  # traffic on the newest certificates too
            load.stop()
        assert all(len(s) >= ROTATIONS + 1 for s in seen.values()), {n: len(s) for n, s in seen.items()}
        assert load.ok > 100
        assert load.failures == [], load.failures[:5]
        # Envoy really holds the newest certificate, and nothing but secrets changed.
        current = {c["node"]: c["serial"].lstrip("0") for c in mesh.api("GET", "/certs", timeout=5).json()["certs"]}
        for node, admin in admins.items():
            assert current[node] in serials_in_envoy(admin), node
        assert listener_and_cluster_versions(mesh) == versions_before
