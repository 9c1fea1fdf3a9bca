"""End-to-end: `interstate rehearse --short` against the election-night example under
`interstate up`, with the real load generator (hey).

The report's numbers must be what was measured: its total equals the rows of requests.csv, and
both match the ingress Envoy's own request counter. The stats hiccup must show (failed or retried
requests during `hiccup`), and the fault must be off once the rehearsal is over.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import CliRunner
from mesh_runner import EXAMPLE, envoy_stats, running_mesh, wait_for

from interstate.rehearse.command import rehearse

pytestmark = pytest.mark.e2e

TOTAL = "http.ingress.downstream_rq_total"
PHASES = ["baseline", "surge", "hiccup", "recovery", "cool-down"]


def hey_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and Path(p.exe()).name == "hey":
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.timeout(120)
def test_short_rehearsal_reports_what_was_measured(tmp_path: Path) -> None:
    assert shutil.which("hey"), "the load generator is missing: apt-get install hey (`make tools` does it)"
    mesh = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, mesh)
    # the hiccup trips the callers' breaker on stats; a short ejection lets the test end healthy
    breaker = mesh / "stats-destination.yml"
    breaker.write_text(breaker.read_text().replace("baseEjectionTime: 30s", "baseEjectionTime: 2s"))
    out = tmp_path / "report"
    with running_mesh(mesh, tmp_path / "run") as run:
        ingress_admin = run.status()["ingress"]["admin"]
        before = envoy_stats(ingress_admin, f"^{re.escape(TOTAL)}$")[TOTAL]

        result = CliRunner().invoke(
            rehearse, ["--admin", run.admin, "--token-file", str(run.token_file), "--short", "--out", str(out)]
        )

        after = envoy_stats(ingress_admin, f"^{re.escape(TOTAL)}$")[TOTAL]
        assert result.exit_code == 0, result.output
        assert hey_processes() == []

        # the fault is off: in the status, and a request goes through
        assert run.status()["services"]["stats"]["resilience"]["fault"] is None

        def through() -> httpx.Response | None:
            response = httpx.get(
                run.ingress + "/results", headers={"x-policy-ctx": "FEC-F101"}, timeout=10, trust_env=False
            )
            return response if response.status_code == 200 else None

        response = wait_for(through, timeout=10, what="the breaker on stats to close again")
        assert response.json()["stats"]["policy_ctx_seen"] == "FEC-F101"

    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.txt", "requests.csv"]
    with (out / "requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((out / "report.json").read_text())
    text = (out / "report.txt").read_text()
    assert text in result.stdout

    # one total, three ways: the report, the raw rows, the ingress Envoy's own counter
    total_line = next(line for line in text.splitlines() if line.startswith("all "))
    assert int(total_line.split()[2].replace(",", "")) == len(rows) == summary["total"]["requests"]
    assert abs((after - before) - len(rows)) <= max(2, len(rows) // 100), (after - before, len(rows))
    assert summary["ingress_requests"] == after - before

    by_phase = {p["phase"]: p for p in summary["phases"]}
    assert list(by_phase) == PHASES
    for name in PHASES:
        assert by_phase[name]["requests"] == sum(1 for r in rows if r["phase"] == name) > 0
    assert by_phase["surge"]["requests"] > 5 * by_phase["baseline"]["requests"]  # the surge happened

    # the stats hiccup shows: failed requests, or retries by the callers' side-cars
    hiccup = by_phase["hiccup"]
    failed = sum(1 for r in rows if r["phase"] == "hiccup" and not r["status"].startswith("2"))
    retries = sum(c.get("retries", 0) for c in hiccup["counters"].values())
    assert failed + retries > 0, hiccup
    assert hiccup["fault"] and not by_phase["recovery"]["fault"]
    assert summary["fault_after"] is None
    assert "fault on stats after the rehearsal: off" in text

    # replicas over time and policy coverage, from the mesh
    assert by_phase["baseline"]["replicas"]["results"]["min"] >= 1
    coverage = summary["policy_coverage"]  # reported by the mesh: every request carried the header
    assert coverage["results"]["requests"] >= len(rows)
    assert coverage["results"]["with_policy"] == coverage["results"]["requests"]

    # progress once a second on stderr; the HTML has the charts
    assert re.search(r"^surge\s+\d/3s\s+sent [\d,]+\s+ok [\d.]+%\s+results: \d+ replicas", result.stderr, re.M)
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3 and 'class="phase-label"' in page
