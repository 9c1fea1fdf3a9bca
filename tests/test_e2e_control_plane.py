"""End-to-end: the control plane is a process of its own, and the data plane outlives it and
the supervisor.

`interstate up` (the supervisor) runs the control plane as a child and restarts it when it dies.
Killed with SIGKILL under load through the ingress, no request fails: every Envoy serves on its
last configuration, reconnects to the new control plane, and is handed the very same versions
(content-hashed snapshots from the same config, the same certificates kept on disk). A
certificate rotation that fell due while the control plane was away happens once it is back.
Killed `interstate up` itself, and the apps and Envoys keep serving; the next `interstate up` on
the same run folder adopts them, and `interstate down` stops them when no `up` is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from mesh_runner import EXAMPLE, Load, MeshRun, alive, cli, envoy_certificates, running_mesh, wait_for

from interstate import audit

pytestmark = [pytest.mark.e2e]


def fixed_mesh(tmp_path: Path) -> Path:
    """The example without its autoscaler: a fixed set of proxies, so versions can be compared."""
    folder = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, folder)
    (folder / "results-autoscale.yaml").unlink()
    return folder


def acked_versions(status: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{node: {type: version ACKed}} for every side-car and the ingress."""
    out = {}
    for service in status["services"].values():
        for replica in service["replicas"]:
            out[replica["sidecar"]["node"]] = {t: v["acked"] for t, v in replica["xds"]["types"].items()}
    out["ingress~ingress"] = {t: v["acked"] for t, v in status["ingress"]["xds"]["types"].items()}
    return out


def synced_with(mesh: MeshRun, before: dict[str, dict[str, str]], restarts: int) -> dict[str, Any] | None:
    """The status once the restarted control plane serves every Envoy the versions of `before`."""
    try:
        status = mesh.status()
    except (httpx.HTTPError, ValueError):
        return None  # still restarting
    if status["control_plane"]["restarts"] != restarts:
        return None
    try:
        return status if acked_versions(status) == before else None
    except (KeyError, TypeError):
        return None  # an Envoy not reconnected yet


def test_a_killed_control_plane_is_restarted_and_no_request_fails(tmp_path: Path) -> None:
    with running_mesh(fixed_mesh(tmp_path), tmp_path / "run") as mesh:
        before = mesh.status()
        versions = acked_versions(before)
        old_pid = before["control_plane"]["pid"]
        assert before["control_plane"]["restarts"] == 0 and old_pid != mesh.proc.pid
        envoy_pids = {r["sidecar"]["pid"] for s in before["services"].values() for r in s["replicas"]}

        with Load(mesh.ingress + "/results", workers=4, max_s=60) as load:
            wait_for(lambda: load.ok >= 50, what="traffic flowing")
            killed_at = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            after = wait_for(lambda: synced_with(mesh, versions, 1), timeout=20, what="every Envoy resynced")
            back_s = time.monotonic() - killed_at
            served_before_stop = load.ok
            wait_for(lambda: load.ok >= served_before_stop + 100, what="traffic after the restart")
            load.stop()

        assert load.failures == [], load.failures[:5]
        assert load.ok > 150
        print(f"control plane back, every Envoy synced on the same versions, {back_s:.2f}s after SIGKILL")
        info = after["control_plane"]
        assert info["pid"] != old_pid and info["last_exit"] == "was killed by SIGKILL"
        # the same Envoys, never restarted; the status says one restart of the control plane
        assert {r["sidecar"]["pid"] for s in after["services"].values() for r in s["replicas"]} == envoy_pids
        status_text = cli("status", "--admin", mesh.admin).stdout
        assert "control plane: pid" in status_text and "restarts 1" in status_text, status_text
        # the audit trail goes on: a record of the restart, and the chain still verifies
        records = audit.read(mesh.run_dir / audit.FILE_NAME)
        restart = [r for r in records if r["action"] == "control-plane.restart"]
        assert len(restart) == 1 and restart[0]["detail"]["previous"] == "was killed by SIGKILL"
        assert audit.verify(mesh.run_dir / audit.FILE_NAME).ok
        # and a change works again
        assert mesh.status()["services"]["stats"]["ready"] >= 1
        assert mesh.stop() == 0


def test_a_rotation_due_while_the_control_plane_is_away_happens_when_it_is_back(tmp_path: Path) -> None:
    # 1-minute certificates rotate after 30 s; the control plane is killed 2 s before and comes back
    # 6 s later, so the rotation falls due while it is away.
    with running_mesh(
        fixed_mesh(tmp_path), tmp_path / "run", "--cert-ttl", "1m", "--control-plane-restart-delay", "6s"
    ) as mesh:
        admins = {
            r["sidecar"]["node"]: r["sidecar"]["admin"]
            for s in mesh.status()["services"].values()
            for r in s["replicas"]
        }
        first = {c["node"]: c for c in mesh.api("GET", "/certs", timeout=5).json()["certs"]}
        due_in = min(c["rotates_in_s"] for c in first.values())
        with Load(mesh.ingress + "/results", workers=2, max_s=90) as load:
            time.sleep(max(due_in - 2, 0))
            os.kill(mesh.status()["control_plane"]["pid"], signal.SIGKILL)
            down_at = time.monotonic()
            # while it is away, changes are refused at once, saying why; nothing hangs
            away = cli("scale", "stats", "2", "--admin", mesh.admin, timeout=10)
            assert away.returncode != 0 and "control plane is restarting" in away.stderr, away
            assert time.monotonic() - down_at < 5
            # the admin port stays the supervisor's: no other process can take it (and collect the
            # admin token from the next CLI call); it answers 503 at once, with or without the token
            port = int(mesh.admin.rsplit(":", 1)[1])
            with socket.socket() as squatter, pytest.raises(OSError):
                squatter.bind(("127.0.0.1", port))
            answer = httpx.get(mesh.admin + "/status", timeout=5, trust_env=False)
            assert answer.status_code == 503 and "restarting" in answer.json()["error"]

            def rotated() -> dict[str, Any] | None:
                try:
                    certs = mesh.api("GET", "/certs", timeout=5).json()["certs"]
                except (httpx.HTTPError, ValueError, KeyError):  # KeyError: 503 while it is away
                    return None
                now = {c["node"]: c for c in certs}
                changed = all(now.get(n, {}).get("serial") not in (None, first[n]["serial"]) for n in admins)
                return now if changed else None

            current = wait_for(rotated, timeout=40, what="certificates rotated by the new control plane")
            assert time.monotonic() - down_at >= 5  # not before it was back
            # every side-car holds its new certificate, none expired
            for node, admin in admins.items():
                held = envoy_certificates(admin)
                wait_for(
                    lambda admin=admin, node=node: any(
                        c["serial_number"].lower().lstrip("0") == current[node]["serial"].lstrip("0")
                        for c in envoy_certificates(admin)
                    ),
                    timeout=10,
                    what=f"{node} holding its rotated certificate",
                )
                for cert in held:
                    assert datetime.fromisoformat(cert["expiration_time"].replace("Z", "+00:00")) > datetime.now(UTC)
            time.sleep(1)
            load.stop()
        assert load.failures == [], load.failures[:5]
        assert load.ok > 50


def unit_pids(status: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """{unit: (app pid, Envoy pid)}, the ingress's app pid 0."""
    out = {
        r["name"]: (r["app"]["pid"], r["sidecar"]["pid"]) for s in status["services"].values() for r in s["replicas"]
    }
    out["ingress"] = (0, status["ingress"]["pid"])
    return out


def running(pids: dict[str, tuple[int, int]]) -> list[psutil.Process]:
    return alive([psutil.Process(p) for pair in pids.values() for p in pair if p and psutil.pid_exists(p)])


def test_a_killed_up_leaves_the_mesh_serving_and_the_next_up_adopts_it(tmp_path: Path) -> None:
    folder, run_dir = fixed_mesh(tmp_path), tmp_path / "run"
    with running_mesh(folder, run_dir) as first:
        before = first.status()
        pids = unit_pids(before)
        with Load(first.ingress + "/results", workers=4, max_s=90) as load:
            wait_for(lambda: load.ok >= 50, what="traffic flowing")
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            served = load.ok
            wait_for(lambda: load.ok >= served + 100, what="traffic with no `interstate up` at all")
            assert len(running(pids)) == 2 * len(pids) - 1  # every app and Envoy still serves
            with running_mesh(folder, run_dir) as second:
                assert second.ingress == first.ingress and second.admin == first.admin  # the mesh's ports
                after = second.status()
                assert sorted(after["supervisor"]["adopted"]) == sorted(pids)
                assert unit_pids(after) == pids  # the same processes, taken over, not restarted
                assert after["control_plane"]["restarts"] == 0
                served = load.ok
                wait_for(lambda: load.ok >= served + 100, what="traffic under the new supervisor")
                load.stop()
                assert second.stop() == 0
            assert running(pids) == []  # a later SIGTERM stops the adopted mesh too
        assert load.failures == [], load.failures[:5]
        starts = [r for r in audit.read(run_dir / audit.FILE_NAME) if r["action"] == "mesh.start"]
        assert sorted(starts[-1]["detail"]["adopted"]) == sorted(pids)


def test_down_stops_what_a_killed_up_left_running(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running_mesh(fixed_mesh(tmp_path), run_dir) as mesh:
        pids = unit_pids(mesh.status())
        mesh.proc.send_signal(signal.SIGKILL)
        mesh.proc.wait(10)
        assert len(running(pids)) == 2 * len(pids) - 1
        down = cli("down", "--run-dir", str(run_dir))
        assert down.returncode == 0, down.stderr
        assert f"stopped {len(pids)} unit(s)" in down.stdout
        assert running(pids) == []
        assert "nothing runs" in cli("down", "--run-dir", str(run_dir)).stdout
