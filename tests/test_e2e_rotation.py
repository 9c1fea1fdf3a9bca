"""End-to-end: with 1-minute certificates (the shortest `up` allows), two rotations under
traffic lose no request. (The rotation loop's timing is tested on a virtual clock:
`test_rotation_loop.py`.)

Rotation is a push of new SDS secrets only: listeners and clusters keep their versions, open
connections stay up, and each Envoy's admin /certs shows the serial the control plane issued.
Bootstrap certificates (the xDS connection's) live as long and are renewed on disk: each Envoy
reloads its own, and once the first ones have expired a restarted control plane still gets
every Envoy back.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from mesh_runner import EXAMPLE, Load, MeshRun, envoy_certificates, running_mesh, wait_for

from interstate.ca.authority import utcnow

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROTATIONS = 2


def serials_in_envoy(socket: str) -> set[str]:
    return {cert["serial_number"].lower().lstrip("0") for cert in envoy_certificates(socket)}


def envoy_admins(mesh: MeshRun) -> dict[str, str]:
    status = mesh.status()
    out = {r["sidecar"]["node"]: r["sidecar"]["admin"] for s in status["services"].values() for r in s["replicas"]}
    out["ingress~ingress"] = status["ingress"]["admin"]
    return out


def bootstrap_certificates(mesh: MeshRun, nodes: list[str]) -> dict[str, x509.Certificate]:
    """Each node's bootstrap certificate, as its SDS file names it now."""
    return {node: x509.load_pem_x509_certificate(mesh.bootstrap_files(node)[0].read_bytes()) for node in nodes}


def every_envoy_connected(mesh: MeshRun, restarts: int) -> bool:
    try:
        status = mesh.status()
    except (httpx.HTTPError, ValueError):
        return False  # the control plane is still restarting
    replicas = [r for s in status["services"].values() for r in s["replicas"]]
    xds = [r.get("xds") for r in replicas] + [status["ingress"].get("xds")]
    return status["control_plane"]["restarts"] == restarts and all(x and x["streams"] >= 1 for x in xds)


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
        first_bootstraps = bootstrap_certificates(mesh, list(admins))
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

        # Bootstrap certificates: renewed on disk, reloaded by every Envoy without a restart.
        bootstraps = bootstrap_certificates(mesh, list(admins))
        for node, admin in admins.items():
            assert bootstraps[node].serial_number != first_bootstraps[node].serial_number, node
            assert f"{bootstraps[node].serial_number:x}" in serials_in_envoy(admin), node
        # Once the first ones have expired, only the renewed ones can open an xDS stream.
        expired_at: datetime = max(c.not_valid_after_utc for c in first_bootstraps.values())
        time.sleep(max(0.0, (expired_at - utcnow()).total_seconds() + 1))
        os.kill(mesh.status()["control_plane"]["pid"], signal.SIGKILL)
        wait_for(lambda: every_envoy_connected(mesh, 1), timeout=30, what="every Envoy back on the new control plane")
