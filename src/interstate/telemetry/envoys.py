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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from interstate.telemetry.flags import explain

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
    node: str
    admin_url: str
    access_log: Path
    outlier_log: Path


async def read_stats_json(http: httpx.AsyncClient, admin_url: str, pattern: str, timeout: float = 2.0) -> Any:
    """Envoy's `/stats?format=json` answer for stats whose name matches `pattern` (Envoy's regex
    filter), histograms included: the one place the mesh reads Envoy stats (status, dashboard,
    autoscaler, draining). Raises httpx.HTTPError or ValueError when Envoy cannot say."""
    response = await http.get(admin_url + "/stats", params={"format": "json", "filter": pattern}, timeout=timeout)
    response.raise_for_status()
    return response.json()


async def read_stats(http: httpx.AsyncClient, admin_url: str, pattern: str) -> dict[str, int]:
    """Counters and gauges whose name matches `pattern`; text stats such as a version hash are
    skipped. Raises httpx.HTTPError or ValueError when Envoy cannot say."""
    payload = await read_stats_json(http, admin_url, pattern)
    return {s["name"]: s["value"] for s in payload.get("stats", []) if isinstance(s.get("value"), int)}


async def counters(http: httpx.AsyncClient, caller: Caller, cluster: str) -> dict[str, int]:
    prefix = f"cluster.{cluster}."
    try:
        stats = await read_stats(http, caller.admin_url, f"^cluster\\.{_re(cluster)}\\.")
    except (httpx.HTTPError, ValueError):
        return {}
    return {key: stats.get(prefix + name, 0) for key, name in COUNTERS.items()}


def _re(text: str) -> str:
    return "".join("\\" + c if c in ".|+*?()[]{}^$\\" else c for c in text)


def ejections(caller: Caller, cluster: str) -> list[dict[str, Any]]:
    """Hosts this caller has ejected from `cluster` right now, with since when and why."""
    last: dict[str, dict[str, Any]] = {}
    try:
        lines = caller.outlier_log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("cluster_name") == cluster and event.get("enforced", True):
            last[event.get("upstream_url", "?")] = event
    return [
        {
            "host": host,
            "since": e.get("timestamp"),
            "reason": e.get("type"),
            "times": e.get("num_ejections"),
            "by": caller.node,
        }
        for host, e in sorted(last.items())
        if e.get("action") == "EJECT"
    ]


def recent_failures(callers: Iterable[Caller], cluster: str, limit: int = 5) -> list[dict[str, Any]]:
    """Failed calls to `cluster` in the tail of the callers' access logs, grouped by reason."""
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for caller in callers:
        for entry in _tail_json(caller.access_log):
            status = int(entry.get("status") or 0)
            if entry.get("cluster") != cluster or entry.get("direction") == "inbound" or status < 500:
                continue
            flags = entry.get("flags") or "-"
            group = groups.setdefault(
                (status, flags),
                {
                    "status": status,
                    "flags": flags,
                    "why": explain(flags),
                    "count": 0,
                    "last": None,
                    "details": entry.get("details"),
                },
            )
            group["count"] += 1
            group["last"] = max(group["last"] or "", entry.get("time") or "")
    return sorted(groups.values(), key=lambda g: g["last"] or "", reverse=True)[:limit]


def _tail_json(path: Path) -> list[dict[str, Any]]:
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
