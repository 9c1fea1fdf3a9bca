"""Envoy's cumulative counters into rates, the one way the mesh does it (dashboard, autoscaler).

A counter read twice gives what happened between the reads; a counter that went back means its
Envoy restarted, and what it counts now all happened since (as Prometheus' `rate()` takes a
reset). The stat patterns the mesh reads live here too: a side-car's inbound requests (dashboard,
autoscaler), the ingress's (dashboard, and the admin API's counts for a rehearsal).
"""

from __future__ import annotations

INBOUND_REQUESTS = r"^http\.inbound(_plaintext)?\.downstream_rq_total$"
INBOUND_STATS = r"^http\.inbound(_plaintext)?\.downstream_(rq_total|rq_5xx|rq_time)$"
INGRESS_STATS = r"^http\.ingress\.downstream_(rq_total|rq_5xx|rq_time)$"
INGRESS_PREFIX = "http.ingress.downstream_rq_"
INGRESS_REQUESTS = r"^http\.ingress\.downstream_rq_(total|completed|2xx)$"  # what a rehearsal counts


def counted(before: int, after: int) -> int:
    """What a counter counted between a read of `before` and a later read of `after`."""
    return after if after < before else after - before


def per_second(before: int, after: int, elapsed_s: float) -> float:
    """`counted` over the seconds between the reads (which must be > 0)."""
    return counted(before, after) / elapsed_s
