"""What the mesh boundary stopped or changed, counted for auditors from the proxies' access logs.

Every proxy writes one JSON access-log line per request (see `compile.listeners.access_log`).
`BoundaryLedger` follows the log files of a run folder — each read picks up only the bytes added
since the last one, so counts are cumulative over the whole run, including proxies that have
since stopped; a file is known by its inode, so a log rotated to `x.envoy.log.1` is read on
from where it was left and no line is counted twice or lost — and counts:

- headers stripped at the boundary, per header *name* and side (`in`: at the ingress, `out`:
  leaving a side-car for an ExternalService or a passed-through host); never values;
- calls to hosts no resource declares, per calling service, host and outcome (`refused`, or
  `passed` under `outboundTrafficPolicy: ALLOW_ANY`);
- requests whose policy header the ingress `replaced` or `rejected`;
- requests reaching each service's side-cars (inbound), and how many carried the policy header
  (the "policy context on every hop" evidence), and gRPC calls by their `grpc-status` (a failed
  gRPC call is an HTTP 200). These lines are counted without JSON parsing.

Names and hosts come from clients, so each counter keeps at most `MAX_LABELS` distinct values;
later ones are counted as `(other)`. Counters are Prometheus counters in the given registry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from interstate.telemetry.flags import GRPC_CODES, grpc_code

MAX_LABELS = 200
MAX_READ = 64 * 1024 * 1024  # bytes of one file read per refresh (the rest next time)
OTHER = "(other)"
_INBOUND = b'"direction":"inbound"'
_NO_POLICY = b'"policy":null'
_SERVICE = re.compile(rb'"service":"([^"]*)"')
_GRPC = re.compile(rb'"grpc":"?(\d+)')
_CLIENT_LABEL = {"stripped": 0, "undeclared": 1}  # which label's values come from clients
_MARKERS = (b'"stripped":"', b"undeclared", b"passthrough", b"policy-re")


@dataclass(frozen=True)
class Stripped:
    header: str
    side: str  # "in": at the ingress; "out": leaving a side-car for a host outside the mesh
    count: int


@dataclass(frozen=True)
class Undeclared:
    service: str
    host: str
    outcome: str
    count: int


@dataclass(frozen=True)
class Coverage:
    requests: int
    with_policy: int


@dataclass(frozen=True)
class BoundarySummary:
    """What crossed the mesh's boundary so far: headers stripped, calls to undeclared hosts, what
    the ingress did with the policy header, and per service how many inbound calls carried it."""

    headers_stripped: list[Stripped] = field(default_factory=list)
    undeclared_hosts: list[Undeclared] = field(default_factory=list)
    policy_headers: dict[str, int] = field(default_factory=dict)
    policy_coverage: dict[str, Coverage] = field(default_factory=dict)


@dataclass
class _Follow:
    offset: int
    rest: bytes = b""


class BoundaryLedger:
    def __init__(
        self,
        folder: Path,
        registry: CollectorRegistry,
        refused_route: str,
        passed_route: str,
        policy_routes: dict[str, str],
        pattern: str = "*.envoy.log",
    ) -> None:
        """`policy_routes`: route-name prefix -> outcome (e.g. `policy-replaced` -> `replaced`)."""
        self.folder = folder
        self.pattern = pattern
        self.refused_route = refused_route
        self.passed_route = passed_route
        self.policy_routes = policy_routes
        self._files: dict[tuple[int, int], _Follow] = {}  # (device, inode) -> how far it was read
        self._seen: dict[str, set[str]] = {}
        self.stripped = Counter(
            "interstate_boundary_headers_stripped",
            "request headers removed at the mesh boundary, by header name (never the value)",
            ["header", "side"],
            registry=registry,
        )
        self.undeclared = Counter(
            "interstate_undeclared_host_calls",
            "calls from a service to a host no resource declares",
            ["service", "host", "outcome"],
            registry=registry,
        )
        self.policy = Counter(
            "interstate_ingress_policy_header",
            "requests whose policy header the ingress replaced or rejected",
            ["outcome"],
            registry=registry,
        )
        self.grpc = Counter(
            "interstate_grpc_calls",
            "gRPC calls that reached a service's side-cars, by the gRPC status they ended with",
            ["service", "grpc_status"],
            registry=registry,
        )
        self.inbound = Counter(
            "interstate_inbound_requests",
            "requests that reached a service's side-cars, by whether they carried the policy header",
            ["service", "policy"],
            registry=registry,
        )
        self.totals: dict[str, dict[tuple[str, ...], int]] = {
            "stripped": {},
            "undeclared": {},
            "policy": {},
            "inbound": {},
            "grpc": {},
        }

    def _logs(self) -> list[tuple[tuple[int, int], Path]]:
        """Every log file now, current and rotated (`x.envoy.log.1`, ...), by (device, inode):
        a rotated file is the same file under a new name, followed on from where it was left."""
        out = []
        for path in (*self.folder.glob(self.pattern), *self.folder.glob(self.pattern + ".*")):
            try:
                stat = path.stat()
            except OSError:
                continue
            out.append(((stat.st_dev, stat.st_ino), path))
        return out

    def skip_existing(self) -> None:
        """Count only what is written from now on (a run folder may hold an earlier run's logs)."""
        for key, path in self._logs():
            try:
                self._files[key] = _Follow(path.stat().st_size)
            except OSError:
                continue

    def refresh(self) -> None:
        logs = self._logs()
        for key, path in sorted(logs, key=lambda item: str(item[1]), reverse=True):  # older rotations first
            for line in self._new_lines(key, path):
                if _INBOUND in line:
                    service = _SERVICE.search(line)
                    if service is not None:
                        name = service.group(1).decode(errors="replace")
                        present = "missing" if _NO_POLICY in line else "present"
                        self._add("inbound", self.inbound, (name, present))
                        grpc = _GRPC.search(line)
                        code = grpc_code(grpc.group(1).decode()) if grpc is not None else None
                        if code is not None:
                            self._add("grpc", self.grpc, (name, GRPC_CODES[code]))
                if any(marker in line for marker in _MARKERS):
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict):
                        self._count(entry)
        kept = {key for key, _ in logs}
        self._files = {key: follow for key, follow in self._files.items() if key in kept}  # deleted: done

    def _new_lines(self, key: tuple[int, int], path: Path) -> Iterable[bytes]:
        try:
            with path.open("rb") as handle:
                follow = self._files.get(key)
                if follow is None or handle.seek(0, 2) < follow.offset:
                    follow = self._files[key] = _Follow(0)  # new, or truncated
                handle.seek(follow.offset)
                data = handle.read(MAX_READ)
        except OSError:
            return []
        follow.offset += len(data)
        data = follow.rest + data
        complete, _, follow.rest = data.rpartition(b"\n")
        if len(follow.rest) > MAX_READ:  # a "line" this long is no access-log line
            follow.rest = b""
        return complete.split(b"\n") if complete else []

    def _count(self, entry: dict[str, Any]) -> None:
        direction = entry.get("direction")
        stripped = entry.get("stripped")
        if isinstance(stripped, str) and stripped not in ("", "-"):
            side = "in" if direction == "ingress" else "out"
            for name in stripped.split(","):
                self._add("stripped", self.stripped, (name, side))
        route = entry.get("route") or ""
        if direction == "outbound" and route in (self.refused_route, self.passed_route):
            service = str(entry.get("service", "?"))
            # a pass-through the side-car refused (the host's own address: `compile.egress`) was not passed
            guarded = str(entry.get("details", "")).startswith("rbac_access_denied")
            outcome = "refused" if route == self.refused_route or guarded else "passed"
            self._add("undeclared", self.undeclared, (service, str(entry.get("authority")), outcome))
        if direction == "ingress":
            for prefix, outcome in self.policy_routes.items():
                if route.startswith(prefix):
                    self._add("policy", self.policy, (outcome,))

    def _add(self, family: str, counter: Counter, labels: tuple[str, ...]) -> None:
        """Count once; the label clients choose (header name, host) is capped at MAX_LABELS values."""
        free = _CLIENT_LABEL.get(family)
        if free is not None:
            seen = self._seen.setdefault(family, set())
            if labels[free] not in seen:
                if len(seen) >= MAX_LABELS:
                    labels = (*labels[:free], OTHER, *labels[free + 1 :])
                else:
                    seen.add(labels[free])
        counter.labels(*labels).inc()
        totals = self.totals[family]
        totals[labels] = totals.get(labels, 0) + 1

    def summary(self) -> BoundarySummary:
        """Counts for `interstate status`, read up to now."""
        self.refresh()
        coverage: dict[str, Coverage] = {}
        for (service, present), n in sorted(self.totals["inbound"].items()):
            was = coverage.get(service, Coverage(0, 0))
            coverage[service] = Coverage(was.requests + n, was.with_policy + (n if present == "present" else 0))
        return BoundarySummary(
            [Stripped(h, s, n) for (h, s), n in sorted(self.totals["stripped"].items())],
            [Undeclared(svc, host, o, n) for (svc, host, o), n in sorted(self.totals["undeclared"].items())],
            {o: n for (o,), n in sorted(self.totals["policy"].items())},
            coverage,
        )
