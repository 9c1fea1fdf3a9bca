"""End-to-end: hung is failed (issue 25, item 3).

A replica that accepts connections and never answers (SIGSTOP: the kernel still accepts for
it) used to be waited on until each caller's timeout, and `status` called it ready. Now the
supervisor's liveness check finds it within a few seconds: it leaves EDS (status: unresponsive),
comes back when continued, and is restarted when it stays silent past --restart-unresponsive;
calls go to the healthy replica meanwhile. A stopped control plane gets the admin API answered
503 at once by the supervisor, the data plane loses nothing, and it is restarted past its limit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from mesh_runner import EXAMPLE, Load, MeshRun, running_mesh, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def two_stats(tmp_path: Path) -> Path:
    mesh = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, mesh)
    stats = mesh / "stats.yaml"
    stats.write_text(stats.read_text().replace("replicas: 1", "replicas: 2"))
    return mesh


def replica(mesh: MeshRun, name: str) -> dict[str, Any]:
    service = name.rsplit("-", 1)[0]
    return next(r for r in mesh.status()["services"][service]["replicas"] if r["name"] == name)


def stats_load(mesh: MeshRun, max_s: float) -> Load:
    """Steady calls to stats through a results side-car, as results' app makes them (10 s timeout)."""
    outbound = replica(mesh, "results-0")["sidecar"]["outbound"]
    return Load(
        "http://stats:8080/stats",
        workers=4,
        max_s=max_s,
        client=lambda: httpx.Client(proxy=f"http://127.0.0.1:{outbound}", timeout=10, trust_env=False),
    )


def test_a_stopped_replica_leaves_service_comes_back_and_is_restarted_past_its_limit(tmp_path: Path) -> None:
    with running_mesh(two_stats(tmp_path), tmp_path / "run", "--restart-unresponsive", "4s") as mesh:
        app = replica(mesh, "stats-1")["app"]["pid"]
        with stats_load(mesh, max_s=60) as load:
            time.sleep(1.0)
            os.kill(app, signal.SIGSTOP)
            stopped = time.monotonic()
            wait_for(
                lambda: replica(mesh, "stats-1")["state"] == "unresponsive", timeout=5, what="stats-1 unresponsive"
            )
            found_after = time.monotonic() - stopped
            assert mesh.status()["services"]["stats"]["ready"] == 1
            served_before = load.seen["stats-1"]
            time.sleep(1.5)
            assert load.seen["stats-1"] == served_before  # out of service: nothing new goes there
            os.kill(app, signal.SIGCONT)  # before its limit: it only comes back
            wait_for(lambda: replica(mesh, "stats-1")["state"] == "ready", timeout=5, what="stats-1 ready again")
            wait_for(lambda: load.seen["stats-1"] > served_before, timeout=5, what="stats-1 serving again")
            assert replica(mesh, "stats-1")["app"]["pid"] == app  # the same process

            os.kill(app, signal.SIGSTOP)  # and now past its limit
            restarted = wait_for(
                lambda: (r := replica(mesh, "stats-1"))["app"]["pid"] != app and r["state"] == "ready" and r,
                timeout=20,
                what="stats-1 restarted and ready",
            )
            seen = load.seen["stats-1"]
            wait_for(lambda: load.seen["stats-1"] > seen, timeout=5, what="the restarted stats-1 serving")
        total = load.ok + len(load.failures)
        print(f"{load.ok}/{total} answered 200; unresponsive {found_after:.1f}s after SIGSTOP; {load.failures[:3]}")
        assert found_after < 5
        assert load.ok / total >= 0.97, load.failures[:5]
        assert restarted["app"]["restarts"] >= 1
        actions = [r["action"] for r in mesh.api("GET", "/audit").json() if r["target"] == ["stats-1"]]
        assert actions.count("replica.unresponsive") == 2 and "replica.answers" in actions
        assert "replica.restart" in actions

        # every replica hung: a fast 503 that says why, not a wait until the caller's timeout
        pids = [replica(mesh, name)["app"]["pid"] for name in ("stats-0", "stats-1")]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: mesh.status()["services"]["stats"]["ready"] == 0, timeout=5, what="no stats ready")
            outbound = replica(mesh, "results-0")["sidecar"]["outbound"]
            with httpx.Client(proxy=f"http://127.0.0.1:{outbound}", timeout=10, trust_env=False) as client:
                asked = time.monotonic()
                answer = client.get("http://stats:8080/stats")
                assert time.monotonic() - asked < 1.0
            assert answer.status_code == 503 and "no healthy upstream" in answer.text
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # restarted meanwhile
                    os.kill(pid, signal.SIGCONT)


def test_a_stopped_control_plane_gets_a_quick_503_and_is_restarted_past_its_limit(tmp_path: Path) -> None:
    with running_mesh(two_stats(tmp_path), tmp_path / "run", "--control-plane-restart-unresponsive", "6s") as mesh:
        plane = mesh.status()["control_plane"]["pid"]
        with Load(mesh.ingress + "/results", workers=3, max_s=40) as load:
            time.sleep(1.0)
            os.kill(plane, signal.SIGSTOP)
            time.sleep(2.0)
            asked = time.monotonic()
            answer = mesh.api("GET", "/status", timeout=5)
            took = time.monotonic() - asked
            assert answer.status_code == 503 and "has not answered" in answer.json()["error"], answer.text
            assert took < 2.0, took
            back = wait_for(
                lambda: (s := _status_or_none(mesh)) is not None and s["control_plane"]["pid"] != plane and s,
                timeout=30,
                what="a new control plane",
            )
        assert "did not answer" in (back["control_plane"]["last_exit"] or "")
        assert load.failures == [] and load.ok > 0  # the data plane lost nothing


def _status_or_none(mesh: MeshRun) -> dict[str, Any] | None:
    try:
        return mesh.status()
    except (httpx.HTTPError, ValueError):
        return None
