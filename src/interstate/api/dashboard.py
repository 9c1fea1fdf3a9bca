"""The live dashboard: `GET /dashboard` (one self-contained page) and `GET /dashboard/data` (JSON).

`Dashboard.data()` reads every side-car's inbound request counters and the ingress's from their
Envoy admin, at most once per `MIN_INTERVAL_S` whoever asks (several browsers get the same
sample); `RateTracker` turns successive cumulative reads into requests/s and 5xx share (restarts
and replicas that come and go included) and keeps the last minute for the sparklines; `assemble`
(pure) joins that with the typed `MeshControl.status()`, `resilience()` and certificates into the JSON
the page draws. Called by the admin API; reads the mesh's `core.control.MeshControl` views and Envoy admin
endpoints, never changes anything.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from interstate.ca.authority import utcnow
from interstate.core.control import INGRESS_SERIES, MeshControl
from interstate.core.status import AutoscalingStatus, IdentityStatus, MeshStatus, ServiceStatus, to_json
from interstate.core.status import ReplicaState as State
from interstate.model.autoscaler import HorizontalPodAutoscaler
from interstate.telemetry import envoy_admin, rates
from interstate.telemetry.boundary import BoundarySummary
from interstate.telemetry.envoys import Ejection, read_stats_json
from interstate.xds.sync import NodeSync

MIN_INTERVAL_S = 0.9  # a page polling every second gets a fresh sample each time; others share it
WINDOW_S = 60.0  # how much history a sparkline shows
MAX_GAP_S = 10.0  # a previous read older than this is a new baseline, not the start of a rate
READ_TIMEOUT_S = 1.0
INGRESS = INGRESS_SERIES  # the ingress's series (no workload can be named so)
PAGE_HEADERS = {
    # everything the page needs is in it: no other origin, no other file
    "content-security-policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
    ),
    "cache-control": "no-store",
}


# ---- reading Envoy ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Reading:
    """One Envoy's cumulative request counters, and its p99 latency over Envoy's last stats flush
    interval (5 s by default; None when no request ended in it)."""

    total: int
    errors: int  # responses with a 5xx status
    p99_ms: float | None = None


def parse_stats(payload: Any) -> Reading:
    """Envoy's `/stats?format=json` answer (filtered to `downstream_rq_total`, `_5xx` and
    `_time`) as one Reading: counters summed over the listeners that matched (`inbound` and
    `inbound_plaintext`), p99 the largest of theirs."""
    total = errors = 0
    p99: float | None = None
    for stat in payload.get("stats", []) if isinstance(payload, dict) else []:
        if not isinstance(stat, dict):
            continue
        name, value = stat.get("name", ""), stat.get("value")
        if isinstance(value, int) and isinstance(name, str):
            if name.endswith(".downstream_rq_total"):
                total += value
            elif name.endswith(".downstream_rq_5xx"):
                errors += value
        histograms = stat.get("histograms")
        if isinstance(histograms, dict):
            p99 = _max(p99, _p99(histograms))
    return Reading(total, errors, p99)


def _p99(histograms: dict[str, Any]) -> float | None:
    quantiles = histograms.get("supported_quantiles") or []
    if 99 not in quantiles:
        return None
    at = quantiles.index(99)
    out: float | None = None
    for histogram in histograms.get("computed_quantiles") or []:
        values = histogram.get("values") or []
        if at < len(values) and isinstance(values[at], dict):
            interval = values[at].get("interval")
            if isinstance(interval, int | float):
                out = _max(out, float(interval))
    return out


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


async def read_envoy(http: httpx.AsyncClient, socket: str, pattern: str) -> Reading | None:
    """One Envoy's Reading, or None when its admin does not answer (stopped, restarting)."""
    try:
        return parse_stats(await read_stats_json(http, socket, pattern, READ_TIMEOUT_S))
    except (httpx.HTTPError, ValueError):
        return None


# ---- rates -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rate:
    rps: float
    error_rate: float | None  # 5xx share of the requests counted; None when there were none
    sources: int  # how many Envoys contributed a delta


@dataclass(frozen=True)
class _Last:
    at: float
    reading: Reading


class RateTracker:
    """Requests/s and 5xx share of named series (a service, the ingress), each summed over
    several sources (its replicas' side-cars), from successive reads of cumulative counters.

    Each source's rate is its own delta over its own elapsed time, so a source that could not be
    read once, joined late or left does not skew the sum: a new source (or one whose previous
    read is older than `max_gap_s`) only sets a baseline; a counter that went back means Envoy
    restarted, and what it counts now happened since (as Prometheus' `rate()` takes it); a
    source missing from a read is gone and forgotten. Keeps `(time, requests/s)` of the last
    `window_s` seconds per series."""

    def __init__(self, window_s: float = WINDOW_S, max_gap_s: float = MAX_GAP_S) -> None:
        self.window_s = window_s
        self.max_gap_s = max_gap_s
        self._last: dict[str, dict[str, _Last]] = {}
        self._history: dict[str, deque[tuple[float, float]]] = {}

    def update(self, series: str, now: float, readings: Mapping[str, Reading | None]) -> Rate | None:
        """Fold one read of every current source of `series` ({source: Reading, or None when it
        could not be read}); the rate since the previous reads, or None when no source has one."""
        previous = self._last.get(series, {})
        current: dict[str, _Last] = {}
        rps = errors_per_s = 0.0
        measured = 0
        for source, reading in readings.items():
            last = previous.get(source)
            if reading is None:
                if last is not None:
                    current[source] = last  # unreadable now: the next read spans the gap
                continue
            current[source] = _Last(now, reading)
            if last is None or now <= last.at or now - last.at > self.max_gap_s:
                continue
            elapsed = now - last.at
            before = last.reading
            rps += rates.per_second(before.total, reading.total, elapsed)
            errors_per_s += rates.per_second(before.errors, reading.errors, elapsed)
            measured += 1
        self._last[series] = current
        if not measured:
            return None
        history = self._history.setdefault(series, deque())
        history.append((now, rps))
        while history and history[0][0] < now - self.window_s:
            history.popleft()
        share = min(1.0, errors_per_s / rps) if rps > 0 else None
        return Rate(rps, share, measured)

    def history(self, series: str, now: float) -> list[tuple[float, float]]:
        """[(seconds ago, requests/s)] of the last `window_s` seconds, oldest first."""
        return [
            (round(now - at, 2), round(rps, 2))
            for at, rps in self._history.get(series, ())
            if now - at <= self.window_s
        ]

    def keep_only(self, series: Sequence[str] | set[str]) -> None:
        """Forget series that are gone (a workload removed by `apply`)."""
        live = set(series)
        self._last = {k: v for k, v in self._last.items() if k in live}
        self._history = {k: v for k, v in self._history.items() if k in live}


@dataclass(frozen=True)
class Traffic:
    """What the page shows of one series."""

    rate: Rate | None
    p99_ms: float | None
    history: list[tuple[float, float]]

    def json(self) -> dict[str, Any]:
        return {
            "rps": None if self.rate is None else round(self.rate.rps, 2),
            "error_rate": None if self.rate is None or self.rate.error_rate is None else round(self.rate.error_rate, 4),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 2),
            "history": [list(point) for point in self.history],
        }


# ---- assembly (pure) -------------------------------------------------------------------------
def xds_state(xds: NodeSync | None) -> dict[str, str]:
    """One proxy's xDS in a word: `nack` (with Envoy's messages), `pending` (sent, not yet
    answered), `synced`, or `disconnected` (no open stream)."""
    if xds is None or not xds.streams:
        return {"state": "disconnected", "message": "no open xDS stream"}
    nacks = [f"{kind}: {t.nack.message}" for kind, t in xds.types.items() if t.nack is not None]
    if nacks:
        return {"state": "nack", "message": "; ".join(nacks)}
    pending = [kind for kind, t in xds.types.items() if t.sent != t.acked]
    if pending:
        return {"state": "pending", "message": "waiting for the ACK of " + ", ".join(pending)}
    return {"state": "synced", "message": ""}


def circuit(ejected: Sequence[Ejection], ready: Sequence[str], callers: Sequence[str]) -> dict[str, Any]:
    """The callers' view of a service: `open` when some caller has ejected every ready replica
    (its calls get a fast 503), `partial` when some replicas are ejected, else `closed`."""
    by_caller: dict[str, set[str]] = {}
    for e in ejected:
        by_caller.setdefault(e.by, set()).add(e.replica)
    replicas = sorted({r for names in by_caller.values() for r in names})
    if not replicas:
        state, words = "closed", "no replica ejected"
    elif ready and any(set(ready) <= names for names in by_caller.values()):
        blind = sorted(c for c, names in by_caller.items() if set(ready) <= names)
        state, words = "open", f"every replica ejected by {', '.join(blind)}: fast 503s"
    else:
        state, words = "partial", f"{len(replicas)} of {len(ready)} ejected: {', '.join(replicas)}"
    return {
        "state": state,
        "words": words,
        "ejected": [
            {"replica": e.replica, "by": e.by, "since": e.since, "reason": e.reason, "times": e.times}
            for e in sorted(ejected, key=lambda e: (e.replica, e.by))
        ],
        "callers": list(callers),
    }


def _autoscaler(name: str | None, autoscaling: AutoscalingStatus | None) -> dict[str, Any] | None:
    if name is None:
        return None
    loop = None if autoscaling is None else autoscaling.autoscalers.get(name)
    return {
        "name": name,
        "last": None if loop is None else to_json(loop.last),
        "scaling": loop is not None and loop.scaling,
        "changes": [] if loop is None else to_json(loop.changes[-3:]),
    }


def assemble(
    status: MeshStatus,
    services: Mapping[str, Traffic],
    ingress: Traffic | None,
    certs: IdentityStatus | None,
    autoscaled: Mapping[str, str],
    at: datetime,
    ingress_node: str = "ingress~ingress",
) -> dict[str, Any]:
    """The page's JSON. `status` is `MeshControl.status()` with its `resilience()`, `services`
    the traffic per workload (ignored for one without side-cars), `certs` the identity's status
    (None while starting), `autoscaled` {workload: its HorizontalPodAutoscaler's name}."""
    rows = [
        _service_row(name, facts, services.get(name), autoscaled, status) for name, facts in status.services.items()
    ]
    proxies = [
        {"node": r.sidecar.node, "service": name, **xds_state(r.xds)}
        for name, facts in status.services.items()
        for r in facts.replicas
        if r.sidecar is not None and r.state is not State.STOPPED
    ]
    if status.ingress is not None:
        proxies.append({"node": ingress_node, "service": "ingress", **xds_state(status.ingress.xds)})
    cert_rows = [] if certs is None else sorted(certs.certs, key=lambda c: c.rotates_in_s)
    return {
        "at": at.isoformat(timespec="seconds"),
        "window_s": WINDOW_S,
        "services": rows,
        "mesh": _mesh_wide(status.boundary, ingress, proxies),
        "xds": proxies,
        "certs": None
        if certs is None
        else {
            "ca": to_json(certs.ca),
            "next_rotation_s": cert_rows[0].rotates_in_s if cert_rows else None,
            "certs": [
                {"node": c.node, "spiffe_id": c.spiffe_id, "not_after": c.not_after, "rotates_in_s": c.rotates_in_s}
                for c in cert_rows
            ],
        },
    }


def _service_row(
    name: str, facts: ServiceStatus, traffic: Traffic | None, autoscaled: Mapping[str, str], status: MeshStatus
) -> dict[str, Any]:
    """One service of the page: its replicas, traffic, circuit, fault and autoscaler."""
    ready = [r.name for r in facts.replicas if r.state is State.READY]
    seen = facts.resilience
    return {
        "name": name,
        "ready": facts.ready,
        "desired": facts.desired,
        "injected": facts.injected,
        "policy": facts.policy,
        "replicas": [
            {
                "name": r.name,
                "state": r.state.value,
                "restarts": (r.app.restarts if r.app else 0) + (r.sidecar.restarts if r.sidecar else 0),
            }
            for r in facts.replicas
        ],
        "traffic": None if traffic is None or not facts.injected else traffic.json(),
        "circuit": None if seen is None else circuit(seen.ejected, ready, seen.callers),
        "fault": None if seen is None else seen.fault,
        "autoscaler": _autoscaler(autoscaled.get(name), status.autoscaling),
    }


def _mesh_wide(boundary: BoundarySummary, ingress: Traffic | None, proxies: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's mesh-wide figures: the ingress's traffic, policy coverage, stripped headers, xDS."""
    coverage = boundary.policy_coverage
    requests = sum(c.requests for c in coverage.values())
    with_policy = sum(c.with_policy for c in coverage.values())
    stripped = boundary.headers_stripped
    return {
        "ingress": None if ingress is None else ingress.json(),
        "policy_coverage": {
            "requests": requests,
            "with_policy": with_policy,
            "share": None if not requests else round(with_policy / requests, 4),
            "by_service": to_json(coverage),
        },
        "headers_stripped": {"total": sum(s.count for s in stripped), "by_header": to_json(stripped)},
        "policy_headers": dict(boundary.policy_headers),
        "undeclared_hosts": sum(u.count for u in boundary.undeclared_hosts),
        "xds": {
            "proxies": len(proxies),
            "synced": sum(1 for p in proxies if p["state"] == "synced"),
            "nacks": sum(1 for p in proxies if p["state"] == "nack"),
        },
    }


# ---- the endpoints ---------------------------------------------------------------------------
@functools.cache
def page_text() -> str:
    return resources.files("interstate.api").joinpath("dashboard.html").read_text(encoding="utf-8")


async def page(request: Request) -> Response:
    """`GET /dashboard`: the page (inline CSS and JS; it polls `dashboard/data` every second)."""
    return HTMLResponse(page_text(), headers=PAGE_HEADERS)


class Dashboard:
    """The server side of the page: one sample at a time, shared by every browser."""

    def __init__(
        self,
        mesh: MeshControl,
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = MIN_INTERVAL_S,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.mesh = mesh
        self.http = http or envoy_admin.client()
        self.clock = clock
        self.min_interval_s = min_interval_s
        self.tracker = RateTracker()
        self._lock = asyncio.Lock()
        self._last: tuple[float, dict[str, Any]] | None = None

    async def endpoint(self, request: Request) -> Response:
        """`GET /dashboard/data`."""
        return JSONResponse(await self.data(), headers={"cache-control": "no-store"})

    async def data(self) -> dict[str, Any]:
        """The latest sample, taken now unless one younger than `min_interval_s` exists."""
        async with self._lock:
            if self._last is not None and self.clock() - self._last[0] < self.min_interval_s:
                return self._last[1]
            data = await self._sample()
            self._last = (self.clock(), data)
            return data

    async def _sample(self) -> dict[str, Any]:
        mesh = self.mesh
        status = mesh.status()
        admins = [a for a in mesh.envoy_admins() if a.series in status.services or a.series == INGRESS]
        ingress = next((a for a in admins if a.series == INGRESS), None)
        reads = [
            (a.series, a.name, a.socket, rates.INGRESS_STATS if a.series == INGRESS else rates.INBOUND_STATS)
            for a in admins
        ]

        async def read_all() -> tuple[float, list[Reading | None]]:
            readings = await asyncio.gather(
                *(read_envoy(self.http, socket, pattern) for _, _, socket, pattern in reads)
            )
            return self.clock(), readings  # the time of the reads, not of the slower resilience()

        (now, readings), resilience = await asyncio.gather(read_all(), mesh.resilience())
        by_series: dict[str, dict[str, Reading | None]] = {service: {} for service in status.services}
        if ingress is not None:
            by_series[INGRESS] = {}
        for (series, name, _, _), reading in zip(reads, readings, strict=True):
            by_series[series][name] = reading
        traffic: dict[str, Traffic] = {}
        for series, current in by_series.items():
            traffic[series] = Traffic(
                rate=self.tracker.update(series, now, current),
                p99_ms=functools.reduce(_max, (r.p99_ms for r in current.values() if r is not None), None),
                history=self.tracker.history(series, now),
            )
        self.tracker.keep_only(set(by_series))
        mesh_ingress = traffic.pop(INGRESS, None)
        hpas = mesh.config.of_kind(HorizontalPodAutoscaler)
        return assemble(
            status.with_resilience(resilience),
            traffic,
            mesh_ingress,
            mesh.certificates(),
            {h.workload: h.name for h in hpas},
            utcnow(),
            ingress_node=ingress.node_id if ingress is not None else "",
        )
