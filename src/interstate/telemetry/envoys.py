"""Read what callers' Envoys know about a service: retries, overflows, timeouts, ejections.

For each service, the proxies that call it (side-cars of its callers, the ingress) hold a
cluster `outbound|<service>`. This module reads their admin stats, their outlier-detection event
logs (who was ejected, when, why) and the tail of their access logs (recent failures, explained
with `flags`). It only reads; the control plane decides whom to ask. `read_stats_json` is the one
reader of Envoy's stats in the mesh.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from interstate.telemetry import envoy_admin
from interstate.telemetry.flags import GRPC_CODES, GRPC_FAILURES, explain, grpc_code

COUNTERS = {
    "requests": "upstream_rq_total",
    "retries": "upstream_rq_retry",
    "retries_succeeded": "upstream_rq_retry_success",
    "retries_refused_by_budget": "upstream_rq_retry_overflow",
    "pool_overflows": "upstream_rq_pending_overflow",
    "connection_overflows": "upstream_cx_overflow",
    "timeouts": "upstream_rq_timeout",
    "per_try_timeouts": "upstream_rq_per_try_timeout",
    "connect_failures": "upstream_cx_connect_fail",
    "ejections_active": "outlier_detection.ejections_active",
    "ejections_total": "outlier_detection.ejections_enforced_total",
}
ACCESS_LOG_TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class Caller:
    """A proxy that calls services, and where to read what it saw: `admin` is its admin socket
    (standalone), or the base URL of a port that serves only `/stats/prometheus` (a Kubernetes
    pod's ready port); its outlier event log and access log, where they are files this process
    can read (None: not known here, so no ejections or failures in words from it)."""

    node: str
    admin: str
    access_log: Path | None = None
    outlier_log: Path | None = None


async def read_stats_json(http: httpx.AsyncClient, socket: str, pattern: str, timeout: float = 2.0) -> Any:
    """Envoy's `/stats?format=json` answer for stats whose name matches `pattern` (Envoy's regex
    filter), histograms included, from the Envoy whose admin socket is `socket` (`http` made by
    `envoy_admin.client()`): the one place the mesh reads Envoy stats (status, dashboard, autoscaler,
    draining). Raises httpx.HTTPError or ValueError when Envoy cannot say."""
    response = await envoy_admin.get(http, socket, "/stats", {"format": "json", "filter": pattern}, timeout)
    response.raise_for_status()
    return response.json()


async def read_stats(http: httpx.AsyncClient, socket: str, pattern: str) -> dict[str, int]:
    """Counters and gauges whose name matches `pattern`; text stats such as a version hash are
    skipped. Raises httpx.HTTPError or ValueError when Envoy cannot say."""
    payload = await read_stats_json(http, socket, pattern)
    return {s["name"]: s["value"] for s in payload.get("stats", []) if isinstance(s.get("value"), int)}


async def counters(http: httpx.AsyncClient, caller: Caller, cluster: str) -> dict[str, int]:
    """The caller's `COUNTERS` for `cluster`; {} when its Envoy cannot say."""
    prefix = f"cluster.{cluster}."
    try:
        if caller.admin.startswith(("http://", "https://")):
            return await _prometheus_counters(http, caller.admin, cluster)
        stats = await read_stats(http, caller.admin, f"^cluster\\.{_re(cluster)}\\.")
    except (httpx.HTTPError, ValueError):
        return {}
    return {key: stats.get(prefix + name, 0) for key, name in COUNTERS.items()}


async def _prometheus_counters(http: httpx.AsyncClient, base_url: str, cluster: str) -> dict[str, int]:
    """`COUNTERS` for `cluster` from Envoy's Prometheus text: stat `cluster.<c>.<name>` is the
    sample `envoy_cluster_<name with . as _>{envoy_cluster_name="<c>"}`."""
    response = await http.get(f"{base_url}/stats/prometheus", timeout=2.0)
    response.raise_for_status()
    wanted = {"envoy_cluster_" + name.replace(".", "_"): key for key, name in COUNTERS.items()}
    out = dict.fromkeys(COUNTERS, 0)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is not None and sample.labels.get("envoy_cluster_name") == cluster:
                out[key] = int(sample.value)
    return out


def _re(text: str) -> str:
    return "".join("\\" + c if c in ".|+*?()[]{}^$\\" else c for c in text)


@dataclass(frozen=True)
class Ejection:
    """A host `by` (a caller's node) has ejected from a cluster right now: since when, why, how
    often so far; `replica` is filled in by whoever knows which replica the host is."""

    host: str
    since: str
    reason: str
    times: int
    by: str
    replica: str = "?"


@dataclass(frozen=True)
class FailureGroup:
    """Recent failed calls with one status and one set of response flags, explained in words;
    `grpc`: the gRPC status name of failed gRPC calls (their HTTP status is 200)."""

    status: int
    flags: str
    why: str
    count: int
    last: str
    details: str | None
    grpc: str | None = None


def _outlier_events(caller: Caller, cluster: str) -> list[dict[str, Any]]:
    """The caller's outlier events for `cluster`, in order. An ejection Envoy did not enforce
    (`"enforced": false`) changed nothing and is left out; an UNEJECT, which Envoy logs with
    `"enforced": false` too, is kept: it ends an ejection."""
    if caller.outlier_log is None:
        return []
    try:
        lines = caller.outlier_log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("cluster_name") != cluster:
            continue
        if event.get("action") == "EJECT" and not event.get("enforced", True):
            continue
        events.append(event)
    return events


def ejections(caller: Caller, cluster: str) -> list[Ejection]:
    """Hosts this caller has ejected from `cluster` right now (a host's last event counts),
    with since when and why."""
    last = {str(e.get("upstream_url", "?")): e for e in _outlier_events(caller, cluster)}
    return [
        Ejection(
            host, str(e.get("timestamp", "")), str(e.get("type", "")), int(e.get("num_ejections") or 0), caller.node
        )
        for host, e in sorted(last.items())
        if e.get("action") == "EJECT"
    ]


def _instant(text: str) -> str:
    """An Envoy timestamp (access log START_TIME, outlier event timestamp: both ISO 8601 UTC)
    cut to milliseconds, so that the two compare as text."""
    return text[:23]


def ejecting_spans(caller: Caller, cluster: str) -> list[tuple[str, str]]:
    """When the caller had at least one host of `cluster` ejected: [(from, to)], `to` "~" while
    it still has (later than any timestamp)."""
    spans: list[tuple[str, str]] = []
    ejected: set[str] = set()
    start = ""
    for event in _outlier_events(caller, cluster):
        at, host = _instant(str(event.get("timestamp", ""))), str(event.get("upstream_url", "?"))
        was = bool(ejected)
        if event.get("action") == "EJECT":
            ejected.add(host)
        else:
            ejected.discard(host)
        if ejected and not was:
            start = at
        elif was and not ejected:
            spans.append((start, at))
    if ejected:
        spans.append((start, "~"))
    return spans


def recent_failures(callers: Iterable[Caller], cluster: str, limit: int = 5) -> list[FailureGroup]:
    """Failed calls to `cluster` in the tail of the callers' access logs, grouped by reason. A
    "no healthy upstream" (UH) is told apart by whether the caller had replicas ejected then
    (circuit open) or not (no replica ready yet, e.g. at start-up)."""
    groups: dict[tuple[int, str, str, str | None], FailureGroup] = {}
    for caller in callers:
        spans: list[tuple[str, str]] | None = None
        for entry in _tail_json(caller.access_log):
            status = int(entry.get("status") or 0)
            code = grpc_code(entry.get("grpc"))
            grpc_failed = code in GRPC_FAILURES
            failed = status >= 500 or grpc_failed
            if entry.get("direction") == "outbound-tcp":  # a connection: no status, its flags say
                failed = (entry.get("flags") or "-") != "-"
            if entry.get("cluster") != cluster or entry.get("direction") == "inbound" or not failed:
                continue
            flags = entry.get("flags") or "-"
            time = str(entry.get("time") or "")
            ejecting = None
            if "UH" in flags.split(","):
                spans = ejecting_spans(caller, cluster) if spans is None else spans
                ejecting = any(start <= _instant(time) <= end for start, end in spans)
            why = explain(flags, ejecting)
            name = GRPC_CODES[code] if grpc_failed and code is not None else None
            if name is not None and flags == "-":
                why = f"the gRPC call failed with {name} ({code}), answered by the app"
            key = (status, flags, why, name)
            was = groups.get(key)
            groups[key] = (
                FailureGroup(status, flags, why, 1, time, entry.get("details"), name)
                if was is None
                else replace(was, count=was.count + 1, last=max(was.last, time))
            )
    return sorted(groups.values(), key=lambda g: g.last, reverse=True)[:limit]


def _tail_json(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - ACCESS_LOG_TAIL_BYTES))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
