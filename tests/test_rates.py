"""One reading of Envoy's counters into rates (issue 22): the dashboard and the autoscaler agree,
an Envoy restart in the middle of a window included."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import httpx
from test_dashboard import envoy_json

from interstate.api.dashboard import RateTracker, Reading
from interstate.standalone.autoscaler import Replica, Sampler
from interstate.telemetry import envoy_admin, rates

# stats-0's inbound counter read once a second; it restarted between the 2nd and 3rd read
READS = [(0.0, 100), (1.0, 150), (2.0, 20), (3.0, 70)]
EXPECTED = [50.0, 20.0, 50.0]  # the reset: the 20 it counts since are the second's traffic


def test_a_counter_is_counted_across_an_envoy_restart_as_prometheus_does() -> None:
    assert [rates.counted(a, b) for a, b in ((100, 150), (150, 20), (20, 70))] == [50, 20, 50]
    assert rates.per_second(150, 20, 2.0) == 10.0


def test_the_dashboard_and_the_autoscaler_give_the_same_rate_through_a_restart() -> None:
    tracker = RateTracker()
    board = [tracker.update("stats", at, {"stats-0": Reading(total, 0)}) for at, total in READS]
    on_board = [r.rps for r in board if r is not None]

    now = {"t": 0.0, "total": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.extensions[envoy_admin.SOCKET] == "/run/envoy/sidecar-stats-0.admin"
        return httpx.Response(200, json=envoy_json({"http.inbound.downstream_rq_total": now["total"]}))

    async def sampled() -> list[float]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        sampler = Sampler(http, clock=lambda: now["t"])
        replica = cast(Replica, SimpleNamespace(name="stats-0", app_pid=None, admin="/run/envoy/sidecar-stats-0.admin"))
        out = []
        for at, total in READS:
            now.update(t=at, total=total)
            rps, _ = await sampler.sample([replica], None)
            out += list(rps.values())
        await http.aclose()
        return out

    to_autoscaler = asyncio.run(sampled())
    assert on_board == to_autoscaler == EXPECTED
