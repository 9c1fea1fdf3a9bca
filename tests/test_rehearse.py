"""The rehearsal (`interstate rehearse`) without a mesh: hey's CSV parsed, percentiles, phase
statistics, the text and HTML reports from synthetic rows, hey run and killed under asyncio, and
the runner against a fake admin API and a fake hey (the fault is always turned off again).

The real thing against the example mesh and real hey is tests/test_e2e_rehearse.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from interstate.rehearse import report
from interstate.rehearse.command import rehearse
from interstate.rehearse.load import (
    CSV_FIELDS,
    HeyFailed,
    HeyMissing,
    Request,
    find_hey,
    hey_command,
    parse_hey_csv,
    requests_csv,
    run_hey,
)
from interstate.rehearse.report import PhaseWindow, Rehearsal, Sample, per_second, percentile, phase_stats
from interstate.rehearse.runner import RehearsalRunner, coverage_of, progress_line, sample_from_status
from interstate.rehearse.scenario import SHORT, Hiccup, Phase, Scenario, workers_for

# What `hey -o csv` printed in a real run (rows come in the order requests finished)
HEY_CSV = """response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
0.0118,0.0003,0.0000,0.0001,0.0112,0.0001,200,0.1052
0.0141,0.0003,0.0000,0.0000,0.0132,0.0006,200,0.1053
0.0021,0.0000,0.0000,0.0000,0.0020,0.0001,503,0.3050
0.0343,0.0005,0.0000,0.0000,0.0332,0.0005,502,0.1051
0.0146,0.0000,0.0000,0.0000,0.0123,0.0023,200,2.0050
"""


# ---- hey's CSV ------------------------------------------------------------------------------
def test_parse_hey_csv_places_rows_on_the_rehearsal_clock_in_start_order() -> None:
    rows = parse_hey_csv(HEY_CSV, "surge", started=10.0)
    assert [r.offset for r in rows] == [0.1051, 0.1052, 0.1053, 0.3050, 2.0050]
    assert [r.status for r in rows] == [502, 200, 200, 503, 200]
    first = rows[0]
    assert first.phase == "surge"
    assert first.t == pytest.approx(10.1051)
    assert first.latency == pytest.approx(0.0343)
    assert (first.dns_dialup, first.response_delay, first.response_read) == (0.0005, 0.0332, 0.0005)
    assert [r.ok for r in rows] == [False, True, True, False, True]


def test_parse_hey_csv_empty_and_header_only() -> None:
    assert parse_hey_csv("", "baseline", 0.0) == []
    assert parse_hey_csv(HEY_CSV.splitlines()[0] + "\n", "baseline", 0.0) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("Summary:\n  Total: 2.0 secs\n", "lacks column"),
        (HEY_CSV.splitlines()[0] + "\n0.1,0,0,0,0.1,0,abc,0.5\n", "line 2"),
        (HEY_CSV.splitlines()[0] + "\n0.1,0,0\n", "line 2"),
    ],
)
def test_parse_hey_csv_refuses_what_is_not_hey_csv(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hey_csv(text, "baseline", 0.0)


def test_requests_csv_keeps_every_measured_field() -> None:
    rows = parse_hey_csv(HEY_CSV, "hiccup", 1.0)
    lines = requests_csv(rows).splitlines()
    assert lines[0].split(",") == list(CSV_FIELDS)  # every field hey measured, and where it ran
    assert len(lines) == 1 + len(rows)
    assert lines[1] == "hiccup,1.1051,0.0343,502,0.0005,0.0000,0.0000,0.0332,0.0005,0.1051"


def test_hey_command_line() -> None:
    command = hey_command("/usr/bin/hey", "http://127.0.0.1:8080/results", 3, 16, 5.0, ("x-policy-ctx: FEC-F101",))
    assert command == [
        "/usr/bin/hey",
        "-z",
        "3s",
        "-c",
        "16",
        "-q",
        "5",
        "-o",
        "csv",
        "-H",
        "x-policy-ctx: FEC-F101",
        "http://127.0.0.1:8080/results",
    ]
    assert hey_command("hey", "u", 2.5, 3, 10 / 3, ())[1:7] == ["-z", "2.5s", "-c", "3", "-q", "3.33333"]


def test_missing_hey_says_how_to_install_it() -> None:
    with pytest.raises(HeyMissing, match="apt-get install hey"):
        find_hey("/nonexistent/hey")


# ---- the plan -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rps, workers, qps", [(4, 1, 4.0), (7, 2, 3.5), (80, 16, 5.0), (200, 40, 5.0), (201, 41, 201 / 41)]
)
def test_workers_for_keeps_each_worker_under_the_cap(rps: float, workers: int, qps: float) -> None:
    assert workers_for(rps) == (workers, pytest.approx(qps))
    c, q = workers_for(rps)
    assert c * q == pytest.approx(rps)


def test_scenario_phases() -> None:
    phases = Scenario(baseline_rps=10, surge=20, phase_seconds=20).phases()
    assert [(p.name, p.rps, p.seconds, p.fault) for p in phases] == [
        ("baseline", 10, 20, False),
        ("surge", 200, 20, False),
        ("hiccup", 200, 20, True),
        ("recovery", 200, 20, False),
        ("cool-down", 10, 20, False),
    ]
    assert SHORT.phase_seconds <= 3 and SHORT.surge_rps <= 100
    assert Hiccup().body() == {"abort": {"percent": 50, "status": 503}, "at": "SERVICE"}


@pytest.mark.parametrize(
    "kwargs",
    [{"baseline_rps": 0}, {"surge": 0.5}, {"phase_seconds": 0.5}, {"fault": Hiccup(percent=0)}, {"path": "results"}],
)
def test_scenario_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Scenario(**kwargs)


# ---- statistics -----------------------------------------------------------------------------
def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def req(phase: str, t: float, ms: float, status: int = 200) -> Request:
    return Request(phase=phase, t=t, latency=ms / 1000, status=status)


def synthetic() -> Rehearsal:
    """Three phases of two seconds; the middle one with the fault on and some failures."""
    windows = [
        PhaseWindow("baseline", 0.0, 2.0),
        PhaseWindow("hiccup", 2.1, 4.1, True),
        PhaseWindow("cool-down", 4.2, 6.2),
    ]
    rows = [req("baseline", 0.1 * i, 10 + i) for i in range(20)]
    rows += [req("hiccup", 2.1 + 0.05 * i, 20.0, 200) for i in range(30)]
    rows += [req("hiccup", 2.5, 1.0, 503), req("hiccup", 2.6, 3.0, 503), req("hiccup", 2.7, 40.0, 503)]
    rows += [req("hiccup", 3.0, 50.0, 502), req("hiccup", 3.1, 8.0, 404)]
    rows += [req("cool-down", 4.2 + 0.2 * i, 5.0) for i in range(10)]

    def counters(retries: int, ejections: int) -> dict[str, dict[str, int]]:
        return {"stats": {"retries": retries, "ejections_total": ejections, "requests": 0}}

    # as the runner polls: before and after each phase, and about once a second
    samples = [
        Sample(-0.1, {"results": 2, "stats": 1}, counters(5, 0), {"stats": None}),
        Sample(1.0, {"results": 2, "stats": 1}, counters(5, 0)),
        Sample(2.02, {"results": 2, "stats": 1}, counters(5, 0)),
        Sample(2.05, {"results": 2, "stats": 1}, counters(5, 0)),
        Sample(3.0, {"results": 3, "stats": 1}, counters(9, 1), {"stats": "abort 50% with 503"}),
        Sample(4.12, {"results": 4, "stats": 1}, counters(12, 1)),
        Sample(4.15, {"results": 4, "stats": 1}, counters(12, 1)),
        Sample(5.0, {"results": 4, "stats": 1}, counters(12, 1)),
        Sample(6.25, {"results": 3, "stats": 1}, counters(12, 1), {"stats": None}),
    ]
    return Rehearsal(
        started_at="2026-11-03 00:00:00 UTC",
        target="http://127.0.0.1:8080/results",
        plan="synthetic",
        headers=("x-policy-ctx: FEC-F101",),
        fault_service="stats",
        phases=windows,
        requests=rows,
        samples=samples,
        coverage_before={"results": {"requests": 100, "with_policy": 100}},
        coverage_after={
            "results": {"requests": 165, "with_policy": 165},
            "stats": {"requests": 60, "with_policy": 59},
        },
        ingress_before=1000,
        ingress_after=1065,
        fault_after=None,
    )


def test_phase_stats_from_measured_rows_and_polls() -> None:
    data = synthetic()
    base, hiccup, cool = (phase_stats(w, data.requests, data.samples) for w in data.phases)
    assert hiccup.p50_503_ms == pytest.approx(3.0)  # the 503s took 1, 3 and 40 ms
    assert (base.requests, base.ok, base.errors_5xx, base.s503) == (20, 20, 0, 0)
    assert base.p50_ms == pytest.approx(19) and base.p99_ms == pytest.approx(29)
    assert base.rps == pytest.approx(10)
    assert base.replicas == {"results": (2, 2), "stats": (1, 1)}
    assert base.counters == {"stats": {"retries": 0, "ejections_total": 0}}
    assert base.p50_503_ms is None  # no 503 in the baseline
    assert (hiccup.requests, hiccup.ok, hiccup.errors_5xx, hiccup.s503, hiccup.fast_503, hiccup.other) == (
        35,
        30,
        4,
        3,
        2,
        1,
    )
    assert hiccup.ok_rate == pytest.approx(30 / 35)
    assert hiccup.fault
    assert hiccup.replicas == {"results": (2, 4), "stats": (1, 1)}  # from the poll before to the one after
    assert hiccup.counters == {"stats": {"retries": 7, "ejections_total": 1}}
    assert cool.replicas == {"results": (3, 4), "stats": (1, 1)}
    total = report.total_stats(data)
    assert total.requests == len(data.requests) == 65
    assert total.seconds == pytest.approx(6.2)


def test_phase_stats_of_an_empty_phase() -> None:
    stats = phase_stats(PhaseWindow("surge", 0, 1), [], [])
    assert stats.requests == 0 and stats.ok_rate is None and stats.p99_ms is None and stats.replicas == {}


def test_coverage_delta() -> None:
    data = synthetic()
    assert report.coverage_delta(data.coverage_before, data.coverage_after) == {"results": (65, 65), "stats": (60, 59)}
    assert report.coverage_delta(None, data.coverage_after) is None


def test_per_second_has_every_second_even_empty_ones() -> None:
    rows = [req("a", 0.2, 1), req("a", 0.9, 2, 503), req("a", 3.5, 3)]
    seconds = per_second(rows, until=5.0)
    assert [(s.second, s.ok, s.failed) for s in seconds] == [(0, 1, 1), (1, 0, 0), (2, 0, 0), (3, 1, 0), (4, 0, 0)]
    assert seconds[0].p99_ms == pytest.approx(2) and seconds[1].p99_ms is None
    assert len(per_second([])) == 1


# ---- reports --------------------------------------------------------------------------------
def test_text_report() -> None:
    text = report.render_text(synthetic())
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("phase") and "p99 ms" in line)
    table = lines[header + 1 : header + 5]
    assert [row.split()[0] for row in table] == ["baseline", "hiccup", "cool-down", "all"]
    assert table[1].split()[:5] == ["hiccup", "*", "2.0", "35", "17.5"]
    assert "85.7%" in table[1]
    assert table[3].split()[:3] == ["all", "6.2", "65"]
    assert "fast 503 = a 503 answered in < 5 ms" in text
    replicas = lines[lines.index(next(line for line in lines if line.startswith("ready replicas"))) + 2 :][:3]
    assert replicas[1].split() == ["hiccup", "2-4", "1"]
    assert "7 / 1" in text  # retries / ejections of calls to stats during the hiccup
    assert re.search(r"stats\s+60\s+59\s+98\.3%", text)
    assert "the ingress Envoy counted 65 requests, hey recorded 65 answers" in text
    assert "fault on stats after the rehearsal: off" in text


def test_text_report_without_coverage_or_counters() -> None:
    data = synthetic()
    data.coverage_before = data.coverage_after = None
    data.ingress_after = None
    data.fault_after = "abort 50% with 503"
    text = report.render_text(data)
    assert "n/a (the mesh does not report policy coverage)" in text
    assert "cross-check: n/a" in text
    assert "STILL ON: abort 50% with 503" in text


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in re.findall(r"<svg.*?</svg>", page, re.S)]


def test_html_report_is_self_contained_with_three_charts() -> None:
    data = synthetic()
    page = report.render_html(data)
    assert page.startswith("<!doctype html>")
    assert "<script" not in page and "<link" not in page and "src=" not in page
    charts = svgs(page)
    assert len(charts) == 3
    ns = "{http://www.w3.org/2000/svg}"
    for chart in charts:
        labels = [t.text for t in chart.iter(f"{ns}text") if t.get("class") == "phase-label"]
        assert labels == ["baseline", "hiccup", "cool-down"]
        bands = [r for r in chart.iter(f"{ns}rect") if r.get("class") == "phase"]
        assert [b.get("data-phase") for b in bands] == labels
        assert bands[1].get("fill") != bands[0].get("fill")  # the fault's phase stands out
    requests, latency, replicas = charts
    bars = [g for g in requests.iter(f"{ns}g") if g.get("class") == "second"]
    assert [int(g.get("data-second", -1)) for g in bars] == list(range(7))  # one bar per second, 0..6
    assert sum(int(g.get("data-ok", 0)) + int(g.get("data-failed", 0)) for g in bars) == len(data.requests)
    assert sum(int(g.get("data-failed", 0)) for g in bars) == 5
    for g in bars:
        assert {r.get("class") for r in g.iter(f"{ns}rect")} == {"ok", "failed"}
    assert [p.get("class") for p in latency.iter(f"{ns}polyline")] == ["p99"]
    lines = {p.get("data-service") for p in replicas.iter(f"{ns}polyline")}
    assert lines == {"results", "stats"}
    assert "<pre>" in page and "hiccup" in page


def test_summary_json() -> None:
    data = report.summary(synthetic())
    json.dumps(data)  # JSON-able
    assert [p["phase"] for p in data["phases"]] == ["baseline", "hiccup", "cool-down"]
    assert data["total"]["requests"] == 65
    assert data["ingress_requests"] == 65
    assert data["phases"][1]["status_503"] == 3 and data["phases"][1]["fast_503"] == 2
    assert data["policy_coverage"]["stats"] == {"requests": 60, "with_policy": 59}


# ---- status polls -----------------------------------------------------------------------------
STATUS: dict[str, Any] = {
    "services": {
        "results": {
            "ready": 3,
            "desired": 3,
            "resilience": {"counters": {"requests": 10, "retries": 2, "ejections_total": 0}, "fault": None},
        },
        "stats": {
            "ready": 1,
            "desired": 1,
            "resilience": {"counters": {"requests": 9, "retries": 0, "ejections_total": 1}, "fault": "abort 50%"},
        },
        "lonely": {"ready": 0, "desired": 1},
    },
    "ingress": {"url": "http://127.0.0.1:8080", "admin": "/run/envoy/ingress-ingress.admin"},
    "boundary": {"policy_coverage": {"results": {"requests": 10, "with_policy": 9}}},
}


def test_sample_from_status() -> None:
    sample = sample_from_status(1.5, STATUS)
    assert sample.t == 1.5
    assert sample.ready == {"results": 3, "stats": 1, "lonely": 0}
    assert sample.counters["stats"] == {"requests": 9, "retries": 0, "ejections_total": 1}
    assert sample.faults == {"results": None, "stats": "abort 50%"}


def test_coverage_of() -> None:
    assert coverage_of(STATUS) == {"results": {"requests": 10, "with_policy": 9}}
    assert coverage_of({"boundary": {}}) is None
    assert coverage_of({}) is None


def test_progress_line() -> None:
    line = progress_line(Phase("surge", 20, 200), 7.2, 1400, 0.9991, {"results": 4, "stats": 1})
    assert line == "surge       7/20s  sent 1,400  ok 99.9%  results: 4 replicas  stats: 1 replica"
    assert "sent n/a" in progress_line(Phase("surge", 20, 200), 1, None, None, {})


# ---- hey under asyncio, with a stand-in ---------------------------------------------------------
FAKE_HEY = """#!{python}
# A stand-in for hey: prints a CSV row per planned request (or misbehaves as told).
import os, sys, time
args = sys.argv[1:]
opt = dict(zip(args[0:-1:2], args[1::2]))
folder = os.environ["FAKE_HEY_DIR"]
calls = len(os.listdir(folder))
open(os.path.join(folder, f"call-{{calls}}"), "w").write(" ".join(args))
mode = os.environ.get("FAKE_HEY_MODE", "ok")
if mode == "hang" or (mode == "fail-3rd" and calls == 2):
    if mode == "hang":
        time.sleep(60)
    sys.exit(1)
time.sleep(float(os.environ.get("FAKE_HEY_SLEEP", "0")))
n = int(int(opt["-c"]) * float(opt["-q"]) * float(opt["-z"].rstrip("s")))
print("response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset")
for i in range(n):
    print(f"0.0100,0.0000,0.0000,0.0000,0.0100,0.0000,{{503 if i % 10 == 0 and calls == 2 else 200}},{{i / n:.4f}}")
"""


@pytest.fixture
def fake_hey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hey"
    path.write_text(FAKE_HEY.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv("FAKE_HEY_DIR", str(calls))
    return path


def hey_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running() and "hey" in " ".join(p.cmdline())]


def test_run_hey_returns_its_csv(fake_hey: Path) -> None:
    text = asyncio.run(run_hey(hey_command(str(fake_hey), "http://x/results", 1, 2, 5, ()), timeout=30))
    assert len(parse_hey_csv(text, "baseline", 0)) == 10


def test_run_hey_kills_a_hey_that_overstays(fake_hey: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HEY_MODE", "hang")
    started = time.monotonic()
    with pytest.raises(HeyFailed, match="did not finish"):
        asyncio.run(run_hey(hey_command(str(fake_hey), "http://x/results", 1, 1, 1, ()), timeout=1.0))
    assert time.monotonic() - started < 10
    assert hey_processes() == []


def test_run_hey_reports_a_failing_hey(fake_hey: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HEY_MODE", "fail-3rd")
    for name in ("call-0", "call-1"):
        (Path(os.environ["FAKE_HEY_DIR"]) / name).write_text("")
    with pytest.raises(HeyFailed, match="exited with 1"):
        asyncio.run(run_hey(hey_command(str(fake_hey), "http://x/results", 1, 1, 1, ()), timeout=30))


# ---- the runner against a fake admin API ----------------------------------------------------------
TOKEN = "a" * 43  # the admin token the fake mesh wants (INTERSTATE_ADMIN_TOKEN for the command)


class FakeMesh:
    """GET /status, GET /ingress/requests and POST /services/{name}/fault, as the admin API answers."""

    def __init__(self) -> None:
        self.faults: list[Any] = []
        self.fault: Any = None
        self.ingress_total = 0
        mesh = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, body: Any, code: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.headers.get("authorization") != f"Bearer {TOKEN}":
                    self.reply({"error": "this API needs a credential"}, 401)
                elif self.path == "/status":
                    status = json.loads(json.dumps(STATUS))
                    status["services"]["stats"]["resilience"]["fault"] = mesh.fault
                    self.reply(status)
                elif self.path == "/ingress/requests":
                    mesh.ingress_total += 1
                    self.reply({"total": mesh.ingress_total})
                else:
                    self.reply({"error": "no"}, 404)

            def do_POST(self) -> None:
                if self.headers.get("authorization") != f"Bearer {TOKEN}":
                    self.reply({"error": "this API needs a credential"}, 401)
                    return
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                mesh.faults.append((self.path, body["fault"]))
                mesh.fault = None if body["fault"] is None else "abort"
                self.reply({"service": "stats", "fault": body["fault"] is not None})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def fake_mesh() -> Iterator[FakeMesh]:
    mesh = FakeMesh()
    mesh.thread.start()
    yield mesh
    mesh.server.shutdown()
    mesh.server.server_close()


QUICK = Scenario(baseline_rps=2, surge=2, phase_seconds=1)


def test_runner_runs_every_phase_and_ends_the_fault(
    fake_mesh: FakeMesh, fake_hey: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HEY_SLEEP", "0.5")
    said: list[str] = []
    result = asyncio.run(RehearsalRunner(fake_mesh.url, TOKEN, QUICK, str(fake_hey), said.append, poll_every=0.2).run())
    assert [w.name for w in result.phases] == ["baseline", "surge", "hiccup", "recovery", "cool-down"]
    assert [w.fault for w in result.phases] == [False, False, True, False, False]
    assert all(a.end <= b.start for a, b in zip(result.phases, result.phases[1:], strict=False))
    assert [r.phase for r in result.requests].count("surge") == 4
    assert result.target == "http://127.0.0.1:8080/results"
    assert fake_mesh.faults == [
        ("/services/stats/fault", {"abort": {"percent": 50, "status": 503}, "at": "SERVICE"}),
        ("/services/stats/fault", None),
    ]
    assert result.fault_after is None
    assert result.coverage_before == result.coverage_after == {"results": {"requests": 10, "with_policy": 9}}
    assert result.samples and result.samples[0].ready["results"] == 3
    assert any(line.startswith("hiccup: fault on") for line in said)
    assert any(re.match(r"surge\s+\d+/1s\s+sent \d+", line) for line in said)
    assert hey_processes() == []


def test_runner_ends_the_fault_when_hey_fails_in_the_hiccup(
    fake_mesh: FakeMesh, fake_hey: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HEY_MODE", "fail-3rd")
    with pytest.raises(HeyFailed):
        asyncio.run(
            RehearsalRunner(fake_mesh.url, TOKEN, QUICK, str(fake_hey), lambda line: None, poll_every=0.2).run()
        )
    assert [body for _, body in fake_mesh.faults] == [{"abort": {"percent": 50, "status": 503}, "at": "SERVICE"}, None]
    assert fake_mesh.fault is None


def test_runner_refuses_to_start_over_an_existing_fault(fake_mesh: FakeMesh, fake_hey: Path) -> None:
    fake_mesh.fault = "abort 10%"
    with pytest.raises(Exception, match="already has a fault"):
        asyncio.run(RehearsalRunner(fake_mesh.url, TOKEN, QUICK, str(fake_hey), lambda line: None).run())
    assert fake_mesh.faults == []
    assert not list(Path(os.environ["FAKE_HEY_DIR"]).iterdir())


# ---- the command ------------------------------------------------------------------------------
def test_command_without_hey_says_apt_get_install_hey() -> None:
    result = CliRunner(env={"INTERSTATE_ADMIN_TOKEN": TOKEN}).invoke(
        rehearse, ["--hey", "/nonexistent/hey", "--admin", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 3
    assert "apt-get install hey" in result.output


def test_command_without_a_mesh(fake_hey: Path) -> None:
    result = CliRunner(env={"INTERSTATE_ADMIN_TOKEN": TOKEN}).invoke(
        rehearse, ["--hey", str(fake_hey), "--admin", "http://127.0.0.1:9", "--short"]
    )
    assert result.exit_code == 3
    assert "is `interstate up` running?" in result.output


def test_command_usage_errors(fake_hey: Path) -> None:
    result = CliRunner(env={"INTERSTATE_ADMIN_TOKEN": TOKEN}).invoke(
        rehearse, ["--hey", str(fake_hey), "-H", "no colon"]
    )
    assert result.exit_code == 2 and "name: value" in result.output
    result = CliRunner(env={"INTERSTATE_ADMIN_TOKEN": TOKEN}).invoke(rehearse, ["--phase-seconds", "0.2"])
    assert result.exit_code == 2


def test_command_writes_every_report(fake_mesh: FakeMesh, fake_hey: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--admin", fake_mesh.url, "--hey", str(fake_hey), "--baseline-rps", "2", "--surge", "2"]
    result = CliRunner(env={"INTERSTATE_ADMIN_TOKEN": TOKEN}).invoke(
        rehearse, [*args, "--phase-seconds", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.txt", "requests.csv"]
    assert (out / "report.txt").read_text() in result.stdout
    rows = (out / "requests.csv").read_text().splitlines()[1:]
    assert len(rows) == json.loads((out / "report.json").read_text())["total"]["requests"] == 2 + 4 + 4 + 4 + 2
