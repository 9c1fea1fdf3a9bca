"""End-to-end: the standalone autoscaler opens lanes under load and closes them after it.

The example mesh with its HorizontalPodAutoscaler for results made quick for a test: a 1 s sync
period (`--autoscale-period 1s`), minReplicas 1, the chapter's 100 requests/s per replica, and a
6 s scale-down stabilization window. `hey` (a real load generator) drives the ingress at a fixed
rate; every request it made is checked.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_runner import EXAMPLE, MeshRun, envoy_stats, running_mesh, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PERIOD_S = 1.0
INGRESS_TOTAL = "http.ingress.downstream_rq_total"
WINDOW_S = 6
HPA = f"""\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{ name: results-hpa }}
spec:
  scaleTargetRef: {{ kind: Deployment, name: results }}
  minReplicas: 1
  maxReplicas: 4
  metrics:
    - type: Pods
      pods:
        metric: {{ name: requests_per_second }}
        target: {{ type: AverageValue, averageValue: "100" }}
  behavior:
    scaleDown: {{ stabilizationWindowSeconds: {WINDOW_S} }}
"""


class Hey:
    """`hey` at a fixed rate in the background; `statuses` are every request's status code."""

    def __init__(self, url: str, seconds: float, workers: int, qps_per_worker: float) -> None:
        command = ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(qps_per_worker), "-o", "csv", "-t", "10"]
        self.process = subprocess.Popen([*command, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.statuses: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out, _ = self.process.communicate()
        rows = csv.DictReader(io.StringIO(out))
        self.statuses = [int(row["status-code"]) for row in rows]

    def wait(self, timeout: float = 60) -> list[int]:
        self._reader.join(timeout)
        assert self.process.returncode == 0, self.process.returncode
        return self.statuses

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


@pytest.fixture()
def mesh(tmp_path: Path) -> Iterator[MeshRun]:
    folder = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, folder)
    (folder / "results-autoscale.yaml").write_text(HPA)
    results = folder / "results.yaml"
    results.write_text(results.read_text().replace("replicas: 2", "replicas: 1"))
    with running_mesh(folder, tmp_path / "run", "--autoscale-period", "1s") as run:
        yield run


def desired(mesh: MeshRun) -> int:
    return int(mesh.status()["services"]["results"]["desired"])


def test_load_above_target_scales_up_within_two_periods_and_back_after_the_window(mesh: MeshRun) -> None:
    ingress = mesh.ingress + "/results"
    assert desired(mesh) == 1
    ingress_admin = mesh.status()["ingress"]["admin"]
    before = envoy_stats(ingress_admin, f"^{re.escape(INGRESS_TOTAL)}$")[INGRESS_TOTAL]
    surge = Hey(ingress, seconds=10, workers=6, qps_per_worker=50)  # 300 rps: 3x the target at 1 replica
    light: Hey | None = None
    try:
        started = time.monotonic()
        wait_for(lambda: desired(mesh) > 1, timeout=10, what="a scale-up", every=0.1)
        scaled_up_after = time.monotonic() - started
        wait_for(lambda: mesh.status()["services"]["results"]["ready"] >= 2, timeout=15, what="new replicas ready")
        peak = max(desired(mesh), 2)
        surge_statuses = surge.wait()
        # a trickle (20 rps, far below the target) goes on while the autoscaler scales back in
        light = Hey(ingress, seconds=WINDOW_S + 8, workers=2, qps_per_worker=10)
        stopped = time.monotonic()
        wait_for(lambda: desired(mesh) == 1, timeout=WINDOW_S + 10, what="the scale-down", every=0.1)
        scaled_down_after = time.monotonic() - stopped
        light_statuses = light.wait()
    finally:
        surge.kill()
        if light is not None:
            light.kill()
    status = mesh.status()
    changes = status["autoscaling"]["autoscalers"]["results-hpa"]["changes"]
    assert changes[0]["from"] == 1 and changes[0]["to"] > 1, changes
    assert "rps/replica" in changes[0]["reason"] or "requests_per_second" in changes[0]["reason"], changes[0]
    # the measured request rate behind the decision was above the target
    assert changes[0]["metrics"][0]["current"] > 100, changes[0]
    # decided within two sync periods of the load (plus the first partial measurement)
    assert scaled_up_after <= 2 * PERIOD_S + 1.5, scaled_up_after
    # not before the stabilization window since the last high recommendation, not much after
    assert WINDOW_S - 2 <= scaled_down_after <= WINDOW_S + 6, scaled_down_after
    assert peak >= 2
    # no request failed while replicas came and went: every answer a 200, and every request the
    # ingress received has an answer in hey's rows (hey leaves out requests that got none)
    assert len(surge_statuses) > 1000 and set(surge_statuses) == {200}, set(surge_statuses)
    assert len(light_statuses) > 50 and set(light_statuses) == {200}, set(light_statuses)
    after = envoy_stats(ingress_admin, f"^{re.escape(INGRESS_TOTAL)}$")[INGRESS_TOTAL]
    assert after - before == len(surge_statuses) + len(light_statuses), (after - before, len(surge_statuses))
    wait_for(lambda: mesh.status()["services"]["results"]["ready"] == 1, timeout=15, what="drained replicas to stop")
