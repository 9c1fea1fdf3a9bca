"""A rehearsal's report, from what was measured only: hey's rows (one per answered request) and
the status polls of the admin API (ready replicas, the callers' counters, faults) plus the policy
coverage counters read before and after. Pure: data in, statistics, text and HTML out.

Latency percentiles use the nearest-rank method (p99 of 100 values is the 99th smallest). A 503
is "fast" (a fail-fast answer: circuit open, no upstream tried) when it took less than FAST_MS.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from interstate.rehearse.load import Request

FAST_MS = 5.0
COUNTER_KEYS = ("retries", "ejections_total")


@dataclass(frozen=True)
class PhaseWindow:
    """When a phase's hey process ran, on the rehearsal's clock (seconds since it began)."""

    name: str
    start: float
    end: float
    fault: bool = False  # the rehearsal had the hiccup's fault on during this phase


@dataclass(frozen=True)
class Sample:
    """One poll of GET /status: ready replicas, callers' cumulative counters and the fault in
    force, per service."""

    t: float
    ready: dict[str, int]
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    faults: dict[str, str | None] = field(default_factory=dict)


Coverage = dict[str, dict[str, int]]  # service -> {"requests": n, "with_policy": n}, cumulative


@dataclass
class Rehearsal:
    """Everything a rehearsal measured."""

    started_at: str  # ISO time, UTC
    target: str  # the URL hey called
    plan: str  # the scenario in words (never a source of numbers)
    headers: tuple[str, ...]
    fault_service: str
    phases: list[PhaseWindow]
    requests: list[Request]
    samples: list[Sample]
    coverage_before: Coverage | None = None
    coverage_after: Coverage | None = None
    ingress_before: int | None = None  # the ingress Envoy's downstream_rq_total
    ingress_after: int | None = None
    fault_after: str | None = "unknown"  # the fault status showed at the end (None = off)


@dataclass(frozen=True)
class PhaseStats:
    name: str
    seconds: float
    requests: int
    ok: int
    p50_ms: float | None
    p99_ms: float | None
    errors_5xx: int
    s503: int
    fast_503: int
    p50_503_ms: float | None  # how quickly the 503s came, against p50_ms of all
    other: int  # neither 2xx nor 5xx
    replicas: dict[str, tuple[int, int]]  # service -> (min, max) ready
    counters: dict[str, dict[str, int]]  # service -> counter -> increase during the phase
    fault: bool

    @property
    def ok_rate(self) -> float | None:
        return self.ok / self.requests if self.requests else None

    @property
    def rps(self) -> float | None:
        return self.requests / self.seconds if self.seconds > 0 else None


# ---- statistics -----------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty); p in 0..100."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError("p must be within 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _counter_delta(before: Sample | None, after: Sample | None) -> dict[str, dict[str, int]]:
    if before is None or after is None:
        return {}
    out: dict[str, dict[str, int]] = {}
    for service, counts in after.counters.items():
        base = before.counters.get(service, {})
        out[service] = {k: counts.get(k, 0) - base.get(k, 0) for k in COUNTER_KEYS if k in counts}
    return out


def _window_samples(
    samples: Sequence[Sample], start: float, end: float
) -> tuple[Sample | None, Sample | None, list[Sample]]:
    """The last poll at or before `start`, the first at or after `end`, and every poll from the
    one to the other (inclusive)."""
    ordered = sorted(samples, key=lambda s: s.t)
    before = next((s for s in reversed(ordered) if s.t <= start), None)
    after = next((s for s in ordered if s.t >= end), None)
    lo = before.t if before is not None else start
    hi = after.t if after is not None else end
    return before, after, [s for s in ordered if lo <= s.t <= hi]


def phase_stats(window: PhaseWindow, requests: Iterable[Request], samples: Sequence[Sample]) -> PhaseStats:
    rows = [r for r in requests if r.phase == window.name]
    latencies = [r.latency * 1000 for r in rows]
    s503 = [r for r in rows if r.status == 503]
    before, after, seen = _window_samples(samples, window.start, window.end)
    replicas: dict[str, tuple[int, int]] = {}
    for sample in seen:
        for service, ready in sample.ready.items():
            lo, hi = replicas.get(service, (ready, ready))
            replicas[service] = (min(lo, ready), max(hi, ready))
    return PhaseStats(
        name=window.name,
        seconds=window.end - window.start,
        requests=len(rows),
        ok=sum(1 for r in rows if r.ok),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        errors_5xx=sum(1 for r in rows if 500 <= r.status < 600),
        s503=len(s503),
        fast_503=sum(1 for r in s503 if r.latency * 1000 < FAST_MS),
        p50_503_ms=percentile([r.latency * 1000 for r in s503], 50),
        other=sum(1 for r in rows if not r.ok and not 500 <= r.status < 600),
        replicas=replicas,
        counters=_counter_delta(before, after),
        fault=window.fault,
    )


def total_stats(rehearsal: Rehearsal) -> PhaseStats:
    """The whole rehearsal as one phase named `all`."""
    if not rehearsal.phases:
        return phase_stats(PhaseWindow("all", 0, 0), [], [])
    start = min(w.start for w in rehearsal.phases)
    end = max(w.end for w in rehearsal.phases)
    rows = [dataclasses.replace(r, phase="all") for r in rehearsal.requests]
    return phase_stats(PhaseWindow("all", start, end, any(w.fault for w in rehearsal.phases)), rows, rehearsal.samples)


def coverage_delta(before: Coverage | None, after: Coverage | None) -> dict[str, tuple[int, int]] | None:
    """Per service, (inbound requests, with the policy header) during the rehearsal; None when
    the mesh does not report coverage."""
    if before is None or after is None:
        return None
    out = {}
    for service, counts in sorted(after.items()):
        base = before.get(service, {})
        out[service] = (
            counts.get("requests", 0) - base.get("requests", 0),
            counts.get("with_policy", 0) - base.get("with_policy", 0),
        )
    return out


@dataclass(frozen=True)
class Second:
    """The requests that started in one second of the rehearsal."""

    second: int
    ok: int
    failed: int
    p99_ms: float | None


def per_second(requests: Sequence[Request], until: float | None = None) -> list[Second]:
    """One entry per second from 0 to the last request (or `until`), empty seconds included."""
    count = max([math.floor(r.t) + 1 for r in requests] + [math.ceil(until or 0.0), 1])
    buckets: list[list[Request]] = [[] for _ in range(count)]
    for r in requests:
        buckets[min(max(int(r.t), 0), count - 1)].append(r)
    return [
        Second(
            i, sum(1 for r in b if r.ok), sum(1 for r in b if not r.ok), percentile([r.latency * 1000 for r in b], 99)
        )
        for i, b in enumerate(buckets)
    ]


def services_of(rehearsal: Rehearsal) -> list[str]:
    names: set[str] = set()
    for s in rehearsal.samples:
        names.update(s.ready)
    return sorted(names)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def summary(rehearsal: Rehearsal) -> dict[str, Any]:
    """The report as JSON-able data (report.json)."""

    def one(s: PhaseStats) -> dict[str, Any]:
        return {
            "phase": s.name,
            "seconds": round(s.seconds, 3),
            "requests": s.requests,
            "ok": s.ok,
            "ok_rate": _round(s.ok_rate, 5),
            "rps": _round(s.rps, 2),
            "p50_ms": _round(s.p50_ms, 3),
            "p99_ms": _round(s.p99_ms, 3),
            "errors_5xx": s.errors_5xx,
            "status_503": s.s503,
            "fast_503": s.fast_503,
            "p50_503_ms": _round(s.p50_503_ms, 3),
            "other_failures": s.other,
            "replicas": {k: {"min": lo, "max": hi} for k, (lo, hi) in s.replicas.items()},
            "counters": s.counters,
            "fault": s.fault,
        }

    coverage = coverage_delta(rehearsal.coverage_before, rehearsal.coverage_after)
    return {
        "started_at": rehearsal.started_at,
        "target": rehearsal.target,
        "plan": rehearsal.plan,
        "phases": [one(phase_stats(w, rehearsal.requests, rehearsal.samples)) for w in rehearsal.phases],
        "total": one(total_stats(rehearsal)),
        "policy_coverage": None
        if coverage is None
        else {k: {"requests": n, "with_policy": p} for k, (n, p) in coverage.items()},
        "ingress_requests": None
        if rehearsal.ingress_before is None or rehearsal.ingress_after is None
        else rehearsal.ingress_after - rehearsal.ingress_before,
        "fault_after": rehearsal.fault_after,
        "timeline": [{"t": round(s.t, 3), "ready": s.ready} for s in rehearsal.samples],
    }


# ---- text -----------------------------------------------------------------------------------
def _n(value: int) -> str:
    return f"{value:,}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(part: int, whole: int) -> str:
    return "n/a" if whole <= 0 else f"{100 * part / whole:.1f}%"


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(r) for r in rows)]


PHASE_COLUMNS = (
    "phase",
    "seconds",
    "requests",
    "req/s",
    "ok (2xx)",
    "p50 ms",
    "p99 ms",
    "5xx",
    "503",
    "fast 503",
    "503 p50 ms",
    "other",
)


def phase_cells(s: PhaseStats, mark_fault: bool = False) -> list[str]:
    """One phase's row of the requests table (text and HTML), in PHASE_COLUMNS order."""
    return [
        s.name + (" *" if mark_fault and s.fault and s.name != "all" else ""),
        f"{s.seconds:.1f}",
        _n(s.requests),
        "-" if s.rps is None else f"{s.rps:.1f}",
        _pct(s.ok, s.requests),
        _ms(s.p50_ms),
        _ms(s.p99_ms),
        _n(s.errors_5xx),
        _n(s.s503),
        _n(s.fast_503),
        _ms(s.p50_503_ms),
        _n(s.other),
    ]


def render_text(rehearsal: Rehearsal) -> str:
    stats = [phase_stats(w, rehearsal.requests, rehearsal.samples) for w in rehearsal.phases]
    total = total_stats(rehearsal)
    services = services_of(rehearsal)
    out = [
        f"interstate rehearsal, election night: {rehearsal.started_at}",
        f"target   GET {rehearsal.target}  " + "  ".join(f"({h})" for h in rehearsal.headers),
        f"plan     {rehearsal.plan}",
        "",
        "requests (measured by hey: one row per answered request)",
    ]
    out += _table(list(PHASE_COLUMNS), [phase_cells(s, mark_fault=True) for s in [*stats, total]])
    out.append(
        f"* fault on: {rehearsal.fault_service} (the service's own side-cars fail calls); "
        f"fast 503 = a 503 answered in < {FAST_MS:g} ms"
    )
    out += ["", "ready replicas, min-max per phase (GET /status about once a second)"]
    if services:
        rows = [[s.name, *(_range(s.replicas.get(svc)) for svc in services)] for s in stats]
        out += _table(["phase", *services], rows)
    else:
        out.append("  n/a (no status poll succeeded)")
    counted = [svc for svc in services if any(svc in s.counters for s in stats)]
    if counted:
        out += ["", "callers' side-cars, increase per phase (GET /status): retries / ejections"]
        rows = [
            [
                s.name,
                *(
                    f"{s.counters.get(svc, {}).get('retries', 0):,} / {s.counters.get(svc, {}).get('ejections_total', 0):,}"
                    for svc in counted
                ),
            ]
            for s in stats
        ]
        out += _table(["phase", *(f"calls to {svc}" for svc in counted)], rows)
    out += ["", "policy header at the side-cars (inbound requests during the rehearsal)"]
    coverage = coverage_delta(rehearsal.coverage_before, rehearsal.coverage_after)
    if coverage is None:
        out.append("  n/a (the mesh does not report policy coverage)")
    elif not coverage:
        out.append("  n/a (no inbound request was counted)")
    else:
        rows = [[svc, _n(n), _n(p), _pct(p, n)] for svc, (n, p) in coverage.items()]
        out += _table(["service", "requests", "with header", "coverage"], rows)
    out.append("")
    if rehearsal.ingress_before is not None and rehearsal.ingress_after is not None:
        seen = rehearsal.ingress_after - rehearsal.ingress_before
        out.append(
            f"cross-check: the ingress Envoy counted {_n(seen)} requests, hey recorded {_n(total.requests)} answers"
            + ("" if seen == total.requests else f" ({_n(seen - total.requests)} without an HTTP answer or not hey's)")
        )
    else:
        out.append("cross-check: n/a (the ingress Envoy's counters could not be read)")
    if rehearsal.fault_after == "unknown":
        out.append(f"fault on {rehearsal.fault_service} after the rehearsal: unknown (status not readable)")
    elif rehearsal.fault_after is None:
        out.append(f"fault on {rehearsal.fault_service} after the rehearsal: off (checked in GET /status)")
    else:
        out.append(f"fault on {rehearsal.fault_service} after the rehearsal: STILL ON: {rehearsal.fault_after}")
    return "\n".join(out) + "\n"


def _range(value: tuple[int, int] | None) -> str:
    if value is None:
        return "n/a"
    lo, hi = value
    return str(lo) if lo == hi else f"{lo}-{hi}"


# ---- HTML with inline SVG -------------------------------------------------------------------
WIDTH, HEIGHT = 900, 220
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 26, 28
PALETTE = ("#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#283593", "#558b2f")


def nice_step(value: float, ticks: int = 4, whole: bool = False) -> float:
    """A round tick step (1, 2 or 5 × a power of ten) so that `ticks` steps reach `value`;
    `whole`: at least 1 (counts of things)."""
    raw = max(value, 1e-9) / ticks
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 5, 10) if raw <= m * exp * (1 + 1e-9))
    return float(max(step, 1.0) if whole else step)


class _Plot:
    def __init__(self, x_max: float, y_max: float, whole: bool = False) -> None:
        self.x_max = max(x_max, 1.0)
        # `whole`: counts of things (replicas), so four whole-number steps
        self.y_step = nice_step(y_max if y_max > 0 else 1.0, whole=whole)
        self.y_max = self.y_step * max(1, math.ceil(y_max / self.y_step - 1e-9))
        self.w = WIDTH - PAD_L - PAD_R
        self.h = HEIGHT - PAD_T - PAD_B

    def x(self, t: float) -> float:
        return PAD_L + self.w * t / self.x_max

    def y(self, v: float) -> float:
        return PAD_T + self.h * (1 - v / self.y_max)

    def frame(self, title: str, unit: str, phases: Sequence[PhaseWindow]) -> list[str]:
        e = html.escape
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{e(title)}">',
            f'<text x="{PAD_L}" y="14" class="title">{e(title)}</text>',
        ]
        for i, w in enumerate(phases):
            x0, x1 = self.x(max(w.start, 0)), self.x(min(w.end, self.x_max))
            fill = "#fde0dc" if w.fault else ("#eef2f7" if i % 2 == 0 else "#f7f9fb")
            out.append(
                f'<rect class="phase" data-phase="{e(w.name)}" x="{x0:.1f}" y="{PAD_T}" '
                f'width="{max(x1 - x0, 0):.1f}" height="{self.h}" fill="{fill}"/>'
            )
            out.append(
                f'<text class="phase-label" x="{(x0 + x1) / 2:.1f}" y="{PAD_T + 12}" text-anchor="middle">'
                f"{e(w.name)}</text>"
            )
        for k in range(round(self.y_max / self.y_step) + 1):
            v = self.y_step * k
            y = self.y(v)
            out.append(f'<line x1="{PAD_L}" x2="{PAD_L + self.w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
            out.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{v:g}</text>')
        step = max(1, int(nice_step(self.x_max, ticks=12, whole=True)))
        for s in range(0, int(self.x_max) + 1, step):
            out.append(f'<text x="{self.x(s):.1f}" y="{HEIGHT - 10}" text-anchor="middle" class="tick">{s}s</text>')
        out.append(
            f'<text x="12" y="{PAD_T + self.h / 2:.0f}" transform="rotate(-90 12 {PAD_T + self.h / 2:.0f})" '
            f'text-anchor="middle" class="tick">{e(unit)}</text>'
        )
        return out


def svg_requests(seconds: Sequence[Second], phases: Sequence[PhaseWindow]) -> str:
    plot = _Plot(len(seconds), 1.15 * max([s.ok + s.failed for s in seconds], default=0))  # room for labels
    out = plot.frame("requests per second (by start): ok (2xx) and failed", "requests/s", phases)
    bar = plot.w / plot.x_max
    for s in seconds:
        x = plot.x(s.second) + bar * 0.1
        y_ok = plot.y(s.ok)
        y_top = plot.y(s.ok + s.failed)
        out.append(
            f'<g class="second" data-second="{s.second}" data-ok="{s.ok}" data-failed="{s.failed}">'
            f'<rect class="ok" x="{x:.1f}" y="{y_ok:.1f}" width="{bar * 0.8:.1f}" height="{plot.y(0) - y_ok:.1f}"/>'
            f'<rect class="failed" x="{x:.1f}" y="{y_top:.1f}" width="{bar * 0.8:.1f}" height="{y_ok - y_top:.1f}"/>'
            f"<title>{s.second}s: {s.ok} ok, {s.failed} failed</title></g>"
        )
    return "\n".join([*out, "</svg>"])


def svg_latency(seconds: Sequence[Second], phases: Sequence[PhaseWindow]) -> str:
    points = [(s.second + 0.5, s.p99_ms) for s in seconds if s.p99_ms is not None]
    plot = _Plot(len(seconds), 1.15 * max([v for _, v in points], default=0))
    out = plot.frame("p99 latency per second (ms)", "ms", phases)
    if points:
        path = " ".join(f"{plot.x(t):.1f},{plot.y(v):.1f}" for t, v in points)
        out.append(f'<polyline class="p99" points="{path}"/>')
        for t, v in points:
            out.append(
                f'<circle class="p99-point" cx="{plot.x(t):.1f}" cy="{plot.y(v):.1f}" r="2.5">'
                f"<title>{int(t)}s: p99 {v:.1f} ms</title></circle>"
            )
    return "\n".join([*out, "</svg>"])


def svg_replicas(samples: Sequence[Sample], phases: Sequence[PhaseWindow], x_max: float) -> str:
    ordered = sorted(samples, key=lambda s: s.t)
    services = sorted({name for s in ordered for name in s.ready})
    plot = _Plot(x_max, max([v for s in ordered for v in s.ready.values()], default=0) + 1, whole=True)
    out = plot.frame("ready replicas per service (GET /status)", "replicas", phases)
    for i, service in enumerate(services):
        color = PALETTE[i % len(PALETTE)]
        points: list[str] = []
        last: int | None = None
        for s in ordered:
            if service not in s.ready:
                continue
            value = s.ready[service]
            if last is not None:
                points.append(f"{plot.x(s.t):.1f},{plot.y(last):.1f}")  # a step, not a slope
            points.append(f"{plot.x(s.t):.1f},{plot.y(value):.1f}")
            last = value
        if points:
            out.append(
                f'<polyline class="replicas" data-service="{html.escape(service)}" stroke="{color}" '
                f'points="{" ".join(points)}"/>'
            )
        out.append(
            f'<text x="{WIDTH - PAD_R - 110 * (len(services) - i)}" y="14" fill="{color}" class="legend">'
            f"— {html.escape(service)}</text>"
        )
    return "\n".join([*out, "</svg>"])


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1b1f24; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { padding: 3px 10px; border-bottom: 1px solid #dde3ea; text-align: right; }
td:first-child, th:first-child { text-align: left; }
svg { display: block; margin: 12px 0; }
svg .title { font-weight: 600; font-size: 13px; }
svg .tick, svg .phase-label, svg .legend { font-size: 11px; fill: #4a5561; }
svg .legend { font-weight: 600; }
svg .grid { stroke: #dde3ea; stroke-width: 1; }
svg .ok { fill: #2e7d32; } svg .failed { fill: #c62828; }
svg .p99 { fill: none; stroke: #1565c0; stroke-width: 1.5; } svg .p99-point { fill: #1565c0; }
svg .replicas { fill: none; stroke-width: 2; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; }
"""


def render_html(rehearsal: Rehearsal) -> str:
    e = html.escape
    end = max([w.end for w in rehearsal.phases] + [r.t for r in rehearsal.requests], default=0.0)
    seconds = per_second(rehearsal.requests, until=end)
    stats = [phase_stats(w, rehearsal.requests, rehearsal.samples) for w in rehearsal.phases] + [total_stats(rehearsal)]
    rows = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in phase_cells(s)) + "</tr>" for s in stats)
    head = "".join(f"<th>{h}</th>" for h in PHASE_COLUMNS)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>interstate rehearsal {e(rehearsal.started_at)}</title>
<style>{STYLE}</style></head>
<body>
<h1>Election-night rehearsal</h1>
<p>{e(rehearsal.started_at)}: GET {e(rehearsal.target)}<br>plan: {e(rehearsal.plan)}</p>
<table class="phases"><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
{svg_requests(seconds, rehearsal.phases)}
{svg_latency(seconds, rehearsal.phases)}
{svg_replicas(rehearsal.samples, rehearsal.phases, float(len(seconds)))}
<h2>Full report</h2>
<pre>{e(render_text(rehearsal))}</pre>
</body></html>
"""
