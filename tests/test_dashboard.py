"""The live dashboard's data: Envoy stats parsed, rates between reads (restarts, replicas that come
and go), and the page's JSON assembled from supervisor status. No process is started: Envoy admin
answers come from an httpx mock transport, time from a fake clock."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from interstate.api import admin, dashboard
from interstate.api.dashboard import RateTracker, Reading
from interstate.core.control import INGRESS_SERIES, EnvoyAdmin
from interstate.core.status import (
    AppProcess,
    AutoscalerStatus,
    AutoscalingStatus,
    CaStatus,
    CertStatus,
    ControlPlaneInfo,
    IdentityStatus,
    IngressStatus,
    MeshStatus,
    ReplicaStatus,
    Resilience,
    ScaleDecision,
    ServiceStatus,
    SidecarProcess,
    XdsSummary,
)
from interstate.core.status import ReplicaState as State
from interstate.telemetry import envoy_admin
from interstate.telemetry.boundary import BoundarySummary, Coverage, Stripped, Undeclared
from interstate.telemetry.envoys import Ejection
from interstate.xds.sync import Nack, NodeSync, TypeSync

AT = datetime(2026, 11, 3, 19, 0, tzinfo=UTC)


def envoy_json(counters: dict[str, int], p99: float | None = None) -> dict[str, Any]:
    """What Envoy's /stats?format=json answers for the dashboard's filter."""
    stats: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in counters.items()]
    quantiles = [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    values = [{"cumulative": 1.0, "interval": None if p99 is None else (p99 if q == 99 else 1.0)} for q in quantiles]
    stats.append(
        {
            "histograms": {
                "supported_quantiles": quantiles,
                "computed_quantiles": [{"name": "http.inbound.downstream_rq_time", "values": values}],
            }
        }
    )
    return {"stats": stats}


# ---- parsing ---------------------------------------------------------------------------------
def test_counters_are_summed_over_the_inbound_listeners_and_p99_is_read() -> None:
    payload = envoy_json(
        {
            "http.inbound.downstream_rq_total": 90,
            "http.inbound_plaintext.downstream_rq_total": 10,
            "http.inbound.downstream_rq_5xx": 3,
            "http.inbound_plaintext.downstream_rq_5xx": 1,
        },
        p99=12.5,
    )
    assert dashboard.parse_stats(payload) == Reading(total=100, errors=4, p99_ms=12.5)


def test_no_request_in_the_last_flush_interval_means_no_p99() -> None:
    payload = envoy_json({"http.ingress.downstream_rq_total": 5}, p99=None)
    assert dashboard.parse_stats(payload) == Reading(5, 0, None)


def test_text_stats_and_odd_answers_are_ignored() -> None:
    assert dashboard.parse_stats({"stats": [{"name": "x.downstream_rq_total", "value": "abc"}, "junk"]}) == Reading(
        0, 0
    )
    assert dashboard.parse_stats([]) == Reading(0, 0)
    assert dashboard.parse_stats({"stats": [{"histograms": {"supported_quantiles": [50]}}]}) == Reading(0, 0)


# ---- rates -----------------------------------------------------------------------------------
def test_the_first_read_is_a_baseline_then_deltas_are_summed_over_replicas() -> None:
    tracker = RateTracker()
    assert tracker.update("results", 10.0, {"results-0": Reading(100, 0), "results-1": Reading(50, 0)}) is None
    rate = tracker.update("results", 11.0, {"results-0": Reading(160, 3), "results-1": Reading(90, 0)})
    assert rate is not None
    assert rate.rps == pytest.approx(100.0)  # 60 + 40 in one second
    assert rate.error_rate == pytest.approx(0.03)
    assert rate.sources == 2


def test_rates_are_per_second_of_each_replicas_own_interval() -> None:
    tracker = RateTracker()
    tracker.update("stats", 0.0, {"stats-0": Reading(0, 0)})
    rate = tracker.update("stats", 0.5, {"stats-0": Reading(50, 0)})
    assert rate is not None and rate.rps == pytest.approx(100.0)


def test_no_requests_means_zero_per_second_and_no_error_share() -> None:
    tracker = RateTracker()
    tracker.update("stats", 0.0, {"stats-0": Reading(7, 1)})
    rate = tracker.update("stats", 1.0, {"stats-0": Reading(7, 1)})
    assert rate is not None and rate.rps == 0.0 and rate.error_rate is None


def test_a_counter_that_went_back_is_a_restarted_envoy_whose_counts_are_all_new() -> None:
    tracker = RateTracker()
    tracker.update("results", 0.0, {"results-0": Reading(5000, 40), "results-1": Reading(4000, 0)})
    rate = tracker.update("results", 2.0, {"results-0": Reading(30, 2), "results-1": Reading(4100, 0)})
    assert rate is not None
    assert rate.rps == pytest.approx((30 + 100) / 2)  # never negative
    assert rate.error_rate == pytest.approx(2 / 130)


def test_a_replica_that_disappears_is_forgotten_and_does_not_make_the_sum_negative() -> None:
    tracker = RateTracker()
    tracker.update("results", 0.0, {"results-0": Reading(1000, 0), "results-1": Reading(900, 0)})
    rate = tracker.update("results", 1.0, {"results-0": Reading(1100, 0)})  # results-1 scaled away
    assert rate is not None and rate.rps == pytest.approx(100.0) and rate.sources == 1
    # if a replica of that name comes back (a new process), it starts from a baseline again
    rate = tracker.update("results", 2.0, {"results-0": Reading(1200, 0), "results-1": Reading(3, 0)})
    assert rate is not None and rate.rps == pytest.approx(100.0) and rate.sources == 1


def test_a_new_replica_contributes_from_its_second_read() -> None:
    tracker = RateTracker()
    tracker.update("results", 0.0, {"results-0": Reading(0, 0)})
    rate = tracker.update("results", 1.0, {"results-0": Reading(100, 0), "results-2": Reading(80, 0)})
    assert rate is not None and rate.rps == pytest.approx(100.0)
    rate = tracker.update("results", 2.0, {"results-0": Reading(150, 0), "results-2": Reading(130, 0)})
    assert rate is not None and rate.rps == pytest.approx(100.0) and rate.sources == 2


def test_an_unreadable_replica_keeps_its_baseline_and_its_next_rate_spans_the_gap() -> None:
    tracker = RateTracker()
    tracker.update("results", 0.0, {"results-0": Reading(0, 0), "results-1": Reading(0, 0)})
    rate = tracker.update("results", 1.0, {"results-0": Reading(100, 0), "results-1": None})
    assert rate is not None and rate.rps == pytest.approx(100.0) and rate.sources == 1
    rate = tracker.update("results", 2.0, {"results-0": Reading(200, 0), "results-1": Reading(200, 0)})
    assert rate is not None and rate.rps == pytest.approx(100.0 + 100.0)  # 200 over its own 2 s


def test_a_read_after_a_long_pause_is_a_new_baseline_not_a_long_average() -> None:
    tracker = RateTracker(max_gap_s=10.0)
    tracker.update("results", 0.0, {"results-0": Reading(0, 0)})
    assert tracker.update("results", 600.0, {"results-0": Reading(60000, 0)}) is None
    rate = tracker.update("results", 601.0, {"results-0": Reading(60010, 0)})
    assert rate is not None and rate.rps == pytest.approx(10.0)


def test_history_keeps_the_last_window_as_ages() -> None:
    tracker = RateTracker(window_s=60.0)
    for second in range(0, 91):
        tracker.update("results", float(second), {"results-0": Reading(second * 10, 0)})
    history = tracker.history("results", 90.0)
    assert history[0] == (60.0, 10.0) and history[-1] == (0.0, 10.0)
    assert len(history) == 61
    tracker.keep_only({"stats"})
    assert tracker.history("results", 90.0) == []
    assert tracker.update("results", 91.0, {"results-0": Reading(910, 0)}) is None  # forgotten: a baseline


# ---- assembly --------------------------------------------------------------------------------
def xds(nack: str | None = None, pending: bool = False, streams: int = 1) -> NodeSync:
    types = {
        "CDS": TypeSync("v2", "v1" if pending else "v2", None),
        "LDS": TypeSync("v3", "v2" if nack else "v3", None if nack is None else Nack("v3", nack, 1.0)),
    }
    return NodeSync(streams, types)


def test_xds_state_in_one_word() -> None:
    assert dashboard.xds_state(xds())["state"] == "synced"
    assert dashboard.xds_state(xds(pending=True)) == {"state": "pending", "message": "waiting for the ACK of CDS"}
    nacked = dashboard.xds_state(xds(nack="Proto constraint validation failed"))
    assert nacked == {"state": "nack", "message": "LDS: Proto constraint validation failed"}
    assert dashboard.xds_state(None)["state"] == "disconnected"
    assert dashboard.xds_state(xds(streams=0))["state"] == "disconnected"


def ejection(replica: str, by: str) -> Ejection:
    return Ejection("127.0.0.1:1", "2026-11-03T19:00:00Z", "5xx", 1, by, replica)


def test_circuit_from_the_callers_view() -> None:
    ready = ["stats-0", "stats-1"]
    callers = ["sidecar~results-0", "sidecar~results-1"]
    assert dashboard.circuit([], ready, callers)["state"] == "closed"
    partial = dashboard.circuit([ejection("stats-1", callers[0]), ejection("stats-0", callers[1])], ready, callers)
    assert partial["state"] == "partial" and partial["words"] == "2 of 2 ejected: stats-0, stats-1"
    both = [ejection("stats-0", callers[0]), ejection("stats-1", callers[0])]
    opened = dashboard.circuit(both, ready, callers)
    assert opened["state"] == "open" and opened["words"] == "every replica ejected by sidecar~results-0: fast 503s"
    assert [e["replica"] for e in opened["ejected"]] == ["stats-0", "stats-1"]


def replica(name: str, state: State = State.READY, restarts: int = 0) -> ReplicaStatus:
    return ReplicaStatus(
        name,
        state,
        "v1",
        AppProcess(1, 1, restarts, "app.log"),
        SidecarProcess(2, f"sidecar~{name}", 1, 2, f"/run/envoy/sidecar-{name}.admin", "envoy.log", 0),
        xds(),
    )


def service(replicas: list[ReplicaStatus], desired: int, ready: int, seen: Resilience | None = None) -> ServiceStatus:
    return ServiceStatus(desired, ready, True, "FEC-F101", "STRICT", replicas, seen)


DECISION = ScaleDecision("2026-11-03T18:59:58+00:00", 2, 3, "results: 2 → 3, ...", [])
DECISION_JSON = {"at": "2026-11-03T18:59:58+00:00", "from": 2, "to": 3, "reason": "results: 2 → 3, ...", "metrics": []}
STATS_SEEN = Resilience(
    ["sidecar~results-0", "sidecar~results-1"],
    {},
    [ejection("stats-0", "sidecar~results-0")],
    [],
    "50% of calls get 503",
)
STATUS = MeshStatus(
    services={
        "results": service(
            [replica("results-0"), replica("results-1", restarts=1), replica("results-2", State.STARTING)], 3, 2
        ),
        "stats": service([replica("stats-0")], 1, 1, STATS_SEEN),
    },
    xds=XdsSummary(1, 5),
    control_plane=ControlPlaneInfo(1),
    ingress=IngressStatus("http://127.0.0.1:8080", "/run/envoy/ingress-ingress.admin", 4, xds(nack="bad route")),
    boundary=BoundarySummary(
        [Stripped("x-debug", "in", 4), Stripped("cookie", "out", 1)],
        [Undeclared("results", "evil.example", "refused", 2)],
        {"replaced": 5},
        {"results": Coverage(100, 100), "stats": Coverage(100, 98)},
    ),
    autoscaling=AutoscalingStatus(15.0, {"results-hpa": AutoscalerStatus(DECISION, [DECISION], True)}),
)
CERTS = IdentityStatus(
    CaStatus("ab", "2027-01-01T00:00:00+00:00", "fec.gov.local", 2),
    [
        CertStatus("sidecar~stats-0", "spiffe://fec.gov.local/ns/default/sa/stats", "1", "x", 900.0),
        CertStatus("ingress~ingress", "spiffe://fec.gov.local/system/ingress", "2", "x", 300.5),
    ],
)


def test_the_page_json_from_status_resilience_and_traffic() -> None:
    traffic = dashboard.Traffic(dashboard.Rate(123.456, 0.01234, 2), 8.123, [(1.0, 120.0), (0.0, 123.46)])
    data = dashboard.assemble(
        STATUS,
        {"results": traffic, "stats": dashboard.Traffic(None, None, [])},
        dashboard.Traffic(dashboard.Rate(50.0, 0.0, 1), None, []),
        CERTS,
        {"results": "results-hpa"},
        AT,
        ingress_node="ingress~ingress",
    )
    json.dumps(data, allow_nan=False)  # what the page receives
    results, stats = data["services"]
    assert (results["name"], results["ready"], results["desired"]) == ("results", 2, 3)
    assert [r["state"] for r in results["replicas"]] == ["ready", "ready", "starting"]
    assert results["replicas"][1]["restarts"] == 1
    assert results["traffic"] == {
        "rps": 123.46,
        "error_rate": 0.0123,
        "p99_ms": 8.12,
        "history": [[1.0, 120.0], [0.0, 123.46]],
    }
    assert results["autoscaler"] == {
        "name": "results-hpa",
        "last": DECISION_JSON,
        "scaling": True,
        "changes": [DECISION_JSON],
    }
    assert results["circuit"] is None and results["fault"] is None  # no callers' view of results
    assert stats["traffic"]["rps"] is None  # not measured yet
    assert stats["circuit"]["state"] == "open" and stats["fault"] == "50% of calls get 503"
    assert stats["autoscaler"] is None
    mesh = data["mesh"]
    assert mesh["ingress"]["rps"] == 50.0 and mesh["ingress"]["error_rate"] == 0.0
    assert mesh["policy_coverage"]["share"] == 0.99
    assert mesh["headers_stripped"]["total"] == 5
    assert mesh["policy_headers"] == {"replaced": 5} and mesh["undeclared_hosts"] == 2
    assert mesh["xds"] == {"proxies": 5, "synced": 4, "nacks": 1}
    assert data["xds"][-1] == {
        "node": "ingress~ingress",
        "service": "ingress",
        "state": "nack",
        "message": "LDS: bad route",
    }
    assert data["certs"]["next_rotation_s"] == 300.5
    assert [c["node"] for c in data["certs"]["certs"]] == ["ingress~ingress", "sidecar~stats-0"]
    assert data["at"] == "2026-11-03T19:00:00+00:00"


def test_a_starting_control_plane_gives_an_empty_but_valid_page() -> None:
    empty = MeshStatus(services={}, xds=XdsSummary(0, 0), control_plane=ControlPlaneInfo(1))
    data = dashboard.assemble(empty, {}, None, None, {}, AT)
    assert data["services"] == [] and data["certs"] is None and data["mesh"]["ingress"] is None
    assert data["mesh"]["policy_coverage"]["share"] is None


# ---- the sampler and the routes, against fake Envoys -----------------------------------------
class FakeEnvoys:
    """Envoy admins on made-up sockets (`/fake/<n>.admin`): {n: (total, 5xx)} counters, bumped by tests."""

    def __init__(self) -> None:
        self.counters: dict[int, tuple[int, int]] = {}
        self.reads = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.reads += 1
        port = int(Path(request.extensions[envoy_admin.SOCKET]).stem)
        if port not in self.counters:
            return httpx.Response(503)
        total, errors = self.counters[port]
        prefix = "http.ingress" if "ingress" in request.url.params["filter"] else "http.inbound"
        return httpx.Response(
            200, json=envoy_json({f"{prefix}.downstream_rq_total": total, f"{prefix}.downstream_rq_5xx": errors}, 4.0)
        )


@dataclass
class FakeEnvoy:
    http: httpx.AsyncClient
    port: int
    node_id: str = "ingress~ingress"

    @property
    def admin(self) -> str:
        return f"/fake/{self.port}.admin"

    @property
    def proxy(self) -> Any:
        return self


@dataclass
class FakeReplica:
    name: str
    sidecar: FakeEnvoy | None
    state: State = State.READY


@dataclass
class FakeConfig:
    def of_kind(self, cls: type) -> tuple[Any, ...]:
        return ()


@dataclass
class FakeMesh:
    replicas: dict[str, list[FakeReplica]]
    ingress: FakeEnvoy | None
    config: FakeConfig = field(default_factory=FakeConfig)

    def certificates(self) -> IdentityStatus | None:
        return None

    def envoy_admins(self) -> list[EnvoyAdmin]:
        out = [
            EnvoyAdmin(service, r.name, f"sidecar~{r.name}", r.sidecar.admin)
            for service, rs in self.replicas.items()
            for r in rs
            if r.sidecar is not None
        ]
        if self.ingress is not None:
            out.append(EnvoyAdmin(INGRESS_SERIES, "ingress", self.ingress.node_id, self.ingress.admin))
        return out

    def status(self) -> MeshStatus:
        services = {
            name: ServiceStatus(
                len(rs),
                sum(r.state is State.READY for r in rs),
                any(r.sidecar is not None for r in rs),
                None,
                "STRICT",
                [ReplicaStatus(r.name, r.state, "v1") for r in rs],
            )
            for name, rs in self.replicas.items()
        }
        ingress = IngressStatus("http://127.0.0.1:8080", "/fake/9.admin", None, None) if self.ingress else None
        return MeshStatus(services, XdsSummary(1, 0), ControlPlaneInfo(1), ingress=ingress)

    async def resilience(self) -> dict[str, Resilience]:
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fake_mesh() -> tuple[FakeEnvoys, FakeMesh, httpx.AsyncClient]:
    envoys = FakeEnvoys()
    http = httpx.AsyncClient(transport=httpx.MockTransport(envoys.handler))
    supervisor = FakeMesh(
        replicas={
            "results": [FakeReplica("results-0", FakeEnvoy(http, 1)), FakeReplica("results-1", FakeEnvoy(http, 2))],
            "legacy": [FakeReplica("legacy-0", None)],  # not injected: no side-car to read
        },
        ingress=FakeEnvoy(http, 9),
    )
    envoys.counters = {1: (0, 0), 2: (0, 0), 9: (0, 0)}
    return envoys, supervisor, http


def test_one_sample_per_interval_is_shared_and_rates_come_from_successive_samples() -> None:
    async def scenario() -> None:
        envoys, supervisor, http = fake_mesh()
        clock = Clock()
        board = dashboard.Dashboard(cast(Any, supervisor), clock=clock, min_interval_s=0.9, http=http)
        first = await board.data()
        assert envoys.reads == 3
        results, legacy = first["services"]
        assert results["traffic"]["rps"] is None  # baselines only
        assert legacy["name"] == "legacy" and legacy["traffic"] is None  # no side-car, nothing measured
        clock.now += 0.5
        assert await board.data() is first and envoys.reads == 3  # a second browser: the same sample
        envoys.counters = {1: (60, 0), 2: (40, 2), 9: (100, 1)}
        clock.now += 0.5
        second = await board.data()
        assert envoys.reads == 6
        results = second["services"][0]
        assert results["traffic"]["rps"] == pytest.approx(100.0)
        assert results["traffic"]["error_rate"] == pytest.approx(0.02)
        assert results["traffic"]["p99_ms"] == 4.0
        assert len(results["traffic"]["history"]) == 1
        assert second["mesh"]["ingress"]["rps"] == pytest.approx(100.0)
        # results-1 is gone and its Envoy no longer answers: the rate is results-0's alone
        supervisor.replicas["results"].pop()
        envoys.counters = {1: (110, 0), 9: (150, 1)}
        clock.now += 1.0
        third = await board.data()
        assert third["services"][0]["traffic"]["rps"] == pytest.approx(50.0)
        await http.aclose()

    asyncio.run(scenario())


def test_the_admin_api_serves_the_page_and_its_data() -> None:
    async def scenario() -> None:
        _, supervisor, http = fake_mesh()
        app = admin.create_app(cast(Any, supervisor))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
            page = await client.get("/dashboard")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert 'fetch("dashboard/data"' in page.text
            data = await client.get("/dashboard/data")
            assert data.status_code == 200 and data.headers["cache-control"] == "no-store"
            assert [s["name"] for s in data.json()["services"]] == ["results", "legacy"]
        await http.aclose()

    asyncio.run(scenario())


def test_the_page_is_self_contained() -> None:
    text = dashboard.page_text()
    assert "<script>" in text and "<style>" in text
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", text)
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) == {"http://www.w3.org/2000/svg"}  # a namespace, not a load
    assert ".innerHTML" not in text  # values from clients (header names) are set as text only
