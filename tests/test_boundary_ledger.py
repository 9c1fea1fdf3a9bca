"""BoundaryLedger: cumulative counts from access-log files as Envoy appends to them.

The lines are the JSON the compiled access log writes (see compile.listeners.access_log); the
end-to-end proof that Envoy writes them is tests/test_e2e_boundary.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from interstate.telemetry.boundary import MAX_LABELS, OTHER, BoundaryLedger, Coverage, Stripped, Undeclared


def ledger(folder: Path) -> tuple[BoundaryLedger, CollectorRegistry]:
    registry = CollectorRegistry()
    out = BoundaryLedger(
        folder,
        registry,
        refused_route="undeclared",
        passed_route="passthrough",
        policy_routes={"policy-replaced": "replaced", "policy-rejected": "rejected"},
    )
    return out, registry


def line(**fields: Any) -> str:
    return json.dumps({"stripped": None, "route": "app", **fields}, separators=(",", ":")) + "\n"


def append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def test_counts_are_cumulative_across_reads_and_split_lines(tmp_path: Path) -> None:
    books, registry = ledger(tmp_path)
    log = tmp_path / "ingress-ingress.envoy.log"
    first = line(direction="ingress", service="ingress", stripped="x-ssn,x-debug")
    append(log, "[info] envoy started\n" + first + first[:20])  # Envoy's own lines and half a line
    books.refresh()
    assert (
        registry.get_sample_value("interstate_boundary_headers_stripped_total", {"header": "x-ssn", "side": "in"}) == 1
    )
    append(log, first[20:] + line(direction="ingress", service="ingress", route="policy-replaced|/r->r|idempotent"))
    books.refresh()
    summary = books.summary()
    assert {(s.header, s.count) for s in summary.headers_stripped} == {("x-ssn", 2), ("x-debug", 2)}
    assert summary.policy_headers == {"replaced": 1}


def test_undeclared_hosts_are_counted_per_service_host_and_outcome(tmp_path: Path) -> None:
    books, registry = ledger(tmp_path)
    log = tmp_path / "sidecar-results-0.envoy.log"
    append(log, line(direction="outbound", service="results", route="undeclared", authority="evil.example"))
    append(log, line(direction="outbound", service="results", route="undeclared", authority="evil.example"))
    append(log, line(direction="outbound", service="results", route="passthrough", authority="127.0.0.1:9"))
    append(log, line(direction="outbound", service="results", route="stats|idempotent", authority="stats"))
    append(log, line(direction="outbound", service="results", stripped="x-ssn", route="fec-api|idempotent"))
    assert books.summary().undeclared_hosts == [
        Undeclared("results", "127.0.0.1:9", "passed", 1),
        Undeclared("results", "evil.example", "refused", 2),
    ]
    assert books.summary().headers_stripped == [Stripped("x-ssn", "out", 1)]
    labels = {"service": "results", "host": "evil.example", "outcome": "refused"}
    assert registry.get_sample_value("interstate_undeclared_host_calls_total", labels) == 2


def test_an_earlier_run_is_not_counted_and_a_truncated_log_is_read_again(tmp_path: Path) -> None:
    log = tmp_path / "ingress-ingress.envoy.log"
    append(log, line(direction="ingress", stripped="x-old"))
    books, _ = ledger(tmp_path)
    books.skip_existing()
    books.refresh()
    assert books.summary().headers_stripped == []
    log.write_text(line(direction="ingress", stripped="x-n"))  # truncated and rewritten, shorter
    assert books.summary().headers_stripped == [Stripped("x-n", "in", 1)]


def test_client_chosen_names_are_capped(tmp_path: Path) -> None:
    books, registry = ledger(tmp_path)
    log = tmp_path / "ingress-ingress.envoy.log"
    append(log, "".join(line(direction="ingress", stripped=f"x-h{i}") for i in range(MAX_LABELS + 50)))
    summary = books.summary().headers_stripped
    assert len(summary) == MAX_LABELS + 1
    assert Stripped(OTHER, "in", 50) in summary
    assert (
        registry.get_sample_value("interstate_boundary_headers_stripped_total", {"header": OTHER, "side": "in"}) == 50
    )


def test_policy_coverage_counts_inbound_requests_with_and_without_the_header(tmp_path: Path) -> None:
    books, registry = ledger(tmp_path)
    log = tmp_path / "sidecar-stats-0.envoy.log"
    append(log, line(direction="inbound", service="stats", policy="FEC-F101") * 3)
    append(log, line(direction="inbound", service="stats", policy=None))
    append(log, line(direction="outbound", service="stats", policy=None))  # not inbound: not counted
    assert books.summary().policy_coverage == {"stats": Coverage(4, 3)}
    labels = {"service": "stats", "policy": "missing"}
    assert registry.get_sample_value("interstate_inbound_requests_total", labels) == 1


def test_grpc_calls_are_counted_per_service_by_grpc_status(tmp_path: Path) -> None:
    books, registry = ledger(tmp_path)
    log = tmp_path / "sidecar-ticker-0.envoy.log"
    append(log, line(direction="inbound", service="ticker", policy="FEC-F101", status=200, grpc="0") * 2)
    append(log, line(direction="inbound", service="ticker", policy="FEC-F101", status=200, grpc="14"))
    append(log, line(direction="inbound", service="ticker", policy="FEC-F101", status=200, grpc=None))  # HTTP
    books.refresh()

    def calls(status: str) -> float | None:
        return registry.get_sample_value("interstate_grpc_calls_total", {"service": "ticker", "grpc_status": status})

    assert (calls("OK"), calls("UNAVAILABLE")) == (2, 1)


def test_a_rotated_log_is_read_on_so_counts_stay_exact(tmp_path: Path) -> None:
    """Rotation (issue 11: logs grew without bound) renames `x.envoy.log` to `x.envoy.log.1`, and
    Envoy, told to reopen, starts a new `x.envoy.log` — but may still flush lines into the old
    one first. Every line is counted once, wherever it was when the ledger read it."""
    books, _ = ledger(tmp_path)
    log = tmp_path / "sidecar-stats-0.envoy.log"
    inbound = line(direction="inbound", service="stats", policy="FEC-F101")
    append(log, inbound * 3)
    assert books.summary().policy_coverage == {"stats": Coverage(3, 3)}
    append(log, inbound * 2)  # not read yet when the log is rotated
    log.rename(tmp_path / "sidecar-stats-0.envoy.log.1")
    append(tmp_path / "sidecar-stats-0.envoy.log.1", inbound)  # Envoy's last flush before reopening
    append(log, inbound * 4)  # the new file
    assert books.summary().policy_coverage == {"stats": Coverage(10, 10)}
    (tmp_path / "sidecar-stats-0.envoy.log.1").rename(tmp_path / "sidecar-stats-0.envoy.log.2")  # shifted on
    log.rename(tmp_path / "sidecar-stats-0.envoy.log.1")
    append(log, inbound)
    assert books.summary().policy_coverage == {"stats": Coverage(11, 11)}
    (tmp_path / "sidecar-stats-0.envoy.log.2").unlink()  # the oldest goes
    assert books.summary().policy_coverage == {"stats": Coverage(11, 11)}
