"""End-to-end: a fault `at: SERVICE` is a real failure for the callers, so their circuit opens.

The example's stats-breaker (the chapter's: 3 consecutive errors; its 30 s ejection shortened to
8 s here, so the end of the ejection is seen too) guards calls to stats. `interstate fault stats --abort 100 --in-service` makes stats' own side-car fail every
request; the results side-car sees the 503s, ejects the only stats replica, and then answers
503 itself at once, without trying stats: the chapter's "fast 503 instead of hanging". A client
of the ingress gets that 503 from results (not a 502).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mesh_runner import EXAMPLE, MeshRun, cli, envoy_stats, running_mesh, wait_for

pytestmark = pytest.mark.e2e

STATS_IN = "http.inbound.downstream_rq_total"
EJECTION_S = 8


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshRun]:
    root = tmp_path_factory.mktemp("fault")
    folder = root / "mesh"
    shutil.copytree(EXAMPLE, folder)
    (folder / "results-autoscale.yaml").unlink()  # a fixed set of replicas
    breaker = folder / "stats-destination.yml"
    breaker.write_text(breaker.read_text().replace("baseEjectionTime: 30s", f"baseEjectionTime: {EJECTION_S}s"))
    with running_mesh(folder, root / "run") as run:
        yield run


def stats_received(mesh: MeshRun) -> int:
    admin = mesh.status()["services"]["stats"]["replicas"][0]["sidecar"]["admin"]
    return envoy_stats(admin, f"^{re.escape(STATS_IN)}$")[STATS_IN]


def test_a_failing_service_trips_its_callers_breaker_and_they_fail_fast(mesh: MeshRun, tmp_path: Path) -> None:
    port = mesh.status()["services"]["results"]["replicas"][0]["sidecar"]["outbound"]
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as results:
        assert results.get("http://stats:8080/healthz").status_code == 200
        on = cli("fault", "stats", "--abort", "100", "--in-service", "--admin", mesh.admin)
        assert on.returncode == 0 and "by stats's own side-cars" in on.stdout, on.stderr
        wait_for(lambda: results.get("http://stats:8080/healthz").status_code == 503, what="the fault to apply")

        def ejected() -> bool:
            results.get("http://stats:8080/healthz")  # each failure counts towards consecutiveErrors
            return bool(mesh.status()["services"]["stats"]["resilience"]["ejected"])

        wait_for(ejected, what="stats to be ejected")
        reached = stats_received(mesh)
        for _ in range(20):
            assert results.get("http://stats:8080/healthz").status_code == 503
        # circuit open: stats was not even tried (Envoy's admin counters are live: a request that
        # had reached stats' side-car would be counted before its 503 came back)
        assert stats_received(mesh) == reached
        # (how fast such a 503 is, is measured by bench/bench_fastfail.py: ~0.03 ms at p50)
    # through the ingress, the browser gets the chapter's 503 (circuit open) at once: the ingress
    # does not retry an app's own 503 (only replies that say the app was not reached)
    response = httpx.get(mesh.ingress + "/results", timeout=10, trust_env=False)
    assert response.status_code == 503 and "circuit open" in response.text
    log = mesh.run_dir / "logs" / "ingress-ingress.envoy.log"

    def newest_results_line() -> dict[str, Any] | None:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        return next((x for x in reversed(lines) if x.get("path") == "/results"), None)

    line = wait_for(newest_results_line, what="the ingress access log line")  # flushed within 1 s
    assert line["status"] == 503 and line["attempts"] == 1, line
    status = mesh.status()["services"]["stats"]["resilience"]
    assert status["fault"] and "own side-cars" in status["fault"]
    off = cli("fault", "stats", "--off", "--admin", mesh.admin)
    assert off.returncode == 0, off.stderr


def test_once_the_ejection_ends_status_and_dashboard_show_the_circuit_closed(mesh: MeshRun) -> None:
    """Issue 11: Envoy logs the uneject with `"enforced": false`; it was dropped, so status and the
    dashboard kept the replica ejected and the circuit open for ever."""
    port = mesh.status()["services"]["results"]["replicas"][0]["sidecar"]["outbound"]
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as results:
        cli("fault", "stats", "--abort", "100", "--in-service", "--admin", mesh.admin)
        wait_for(lambda: results.get("http://stats:8080/healthz").status_code == 503, what="the fault to apply")

        def ejected() -> list[dict[str, Any]]:
            results.get("http://stats:8080/healthz")
            return list(mesh.status()["services"]["stats"]["resilience"]["ejected"])

        (ejection,) = wait_for(ejected, what="stats to be ejected")
        assert ejection["replica"] == "stats-0"
        assert cli("fault", "stats", "--off", "--admin", mesh.admin).returncode == 0
        # Envoy brings the host back after its ejection time (checked every `interval`, 1 s)
        wait_for(
            lambda: not mesh.status()["services"]["stats"]["resilience"]["ejected"],
            timeout=EJECTION_S * 2 + 5,
            what="the uneject to show in status",
        )
        outlier_log = mesh.run_dir / "logs" / "sidecar-results-0.outlier.log"
        events = [json.loads(x) for x in outlier_log.read_text().splitlines() if x.startswith("{")]
        assert any(e.get("action") == "UNEJECT" for e in events), events
        assert results.get("http://stats:8080/healthz").status_code == 200
    board = mesh.api("GET", "/dashboard/data").json()
    (stats,) = [s for s in board["services"] if s["name"] == "stats"]
    assert stats["circuit"]["state"] == "closed", stats["circuit"]
