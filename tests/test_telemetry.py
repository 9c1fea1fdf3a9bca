"""Reading what Envoys report: flags in words, ejections from the outlier event log, failures
from the access log. The files are written as Envoy writes them (JSON lines)."""

from __future__ import annotations

import json
from pathlib import Path

from interstate.telemetry import envoys, flags
from interstate.telemetry.flags import explain


def test_flags_are_explained_in_words() -> None:
    assert explain("UH").startswith("no healthy upstream")
    assert explain("UO").startswith("upstream overflow")
    assert explain("UT").startswith("timed out by the caller's side-car")
    assert explain("UF,URX") == (
        "upstream connection failure: could not connect to the replica; retry limit reached: every attempt failed"
    )
    assert explain("-").startswith("no Envoy flag")
    assert explain("ZZ") == "Envoy flag ZZ"


def caller(tmp_path: Path) -> envoys.Caller:
    return envoys.Caller("sidecar~results-0", "http://127.0.0.1:1", tmp_path / "access.log", tmp_path / "outlier.log")


def test_ejections_are_the_hosts_whose_last_event_is_an_eject(tmp_path: Path) -> None:
    events = [
        {
            "type": "CONSECUTIVE_5XX",
            "cluster_name": "outbound|stats",
            "upstream_url": "127.0.0.1:1001",
            "action": "EJECT",
            "num_ejections": 1,
            "enforced": True,
            "timestamp": "2026-11-03T19:00:01Z",
        },
        {
            "type": "CONSECUTIVE_5XX",
            "cluster_name": "outbound|stats",
            "upstream_url": "127.0.0.1:1002",
            "action": "EJECT",
            "num_ejections": 1,
            "enforced": True,
            "timestamp": "2026-11-03T19:00:02Z",
        },
        {
            "cluster_name": "outbound|stats",
            "upstream_url": "127.0.0.1:1001",
            "action": "UNEJECT",
            "num_ejections": 1,
            "timestamp": "2026-11-03T19:00:31Z",
        },
        {
            "type": "CONSECUTIVE_5XX",
            "cluster_name": "outbound|audit",
            "upstream_url": "127.0.0.1:2001",
            "action": "EJECT",
            "num_ejections": 1,
            "enforced": True,
            "timestamp": "2026-11-03T19:00:03Z",
        },
    ]
    c = caller(tmp_path)
    c.outlier_log.write_text("\n".join(json.dumps(e) for e in events) + "\nnot json\n")
    assert envoys.ejections(c, "outbound|stats") == [
        envoys.Ejection("127.0.0.1:1002", "2026-11-03T19:00:02Z", "CONSECUTIVE_5XX", 1, "sidecar~results-0")
    ]
    assert envoys.ejections(caller(tmp_path / "missing"), "outbound|stats") == []


def test_recent_failures_are_grouped_by_status_and_flag(tmp_path: Path) -> None:
    def line(status: int, flags: str, time: str, cluster: str = "outbound|stats", direction: str = "outbound") -> str:
        return json.dumps(
            {"status": status, "flags": flags, "time": time, "cluster": cluster, "direction": direction, "details": "x"}
        )

    c = caller(tmp_path)
    c.access_log.write_text(
        "\n".join(
            [
                "[2026-11-03 19:00:00.000][1][warning][main] an Envoy log line, not JSON",
                line(200, "-", "19:00:00"),
                line(503, "UH", "19:00:01"),
                line(503, "UH", "19:00:02"),
                line(504, "UT", "19:00:03"),
                line(503, "UH", "19:00:04", cluster="outbound|audit"),
                line(500, "-", "19:00:05", cluster="inbound|stats", direction="inbound"),
            ]
        )
        + "\n"
    )
    failures = envoys.recent_failures([c], "outbound|stats")
    assert [(f.status, f.flags, f.count, f.last) for f in failures] == [
        (504, "UT", 1, "19:00:03"),
        (503, "UH", 2, "19:00:02"),
    ]
    assert failures[1].why.startswith("no healthy upstream")


def test_failed_grpc_calls_count_by_their_grpc_status_not_their_http_200(tmp_path: Path) -> None:
    """Issue 12: Envoy logs a failed gRPC call as 200; status showed none of them."""

    def line(grpc: str | None, time: str, flags: str = "-") -> str:
        entry = {"status": 200, "grpc": grpc, "flags": flags, "time": time, "cluster": "outbound|stats"}
        return json.dumps(entry | {"direction": "outbound"})

    c = caller(tmp_path)
    c.access_log.write_text(
        "\n".join(
            [
                line("0", "19:00:00"),  # OK
                line("14", "19:00:01"),  # UNAVAILABLE: the service failed
                line("14", "19:00:02"),
                line("5", "19:00:03"),  # NOT_FOUND: the caller asked for something that is not there
                line(None, "19:00:04"),  # a plain HTTP call
                line("4", "19:00:05", flags="UT"),
            ]
        )
        + "\n"
    )
    failures = envoys.recent_failures([c], "outbound|stats")
    assert [(f.grpc, f.flags, f.count) for f in failures] == [("DEADLINE_EXCEEDED", "UT", 1), ("UNAVAILABLE", "-", 2)]
    assert failures[1].why == "the gRPC call failed with UNAVAILABLE (14), answered by the app"
    assert failures[0].why.startswith("timed out by the caller's side-car")


def test_a_tcp_connection_that_reached_no_replica_is_a_failure(tmp_path: Path) -> None:
    def line(flags: str, time: str) -> str:
        entry = {"status": 0, "flags": flags, "time": time, "cluster": "outbound|cache", "direction": "outbound-tcp"}
        return json.dumps(entry)

    c = caller(tmp_path)
    c.access_log.write_text("\n".join([line("-", "19:00:00"), line("UF,URX", "19:00:01")]) + "\n")
    (failed,) = envoys.recent_failures([c], "outbound|cache")
    assert (failed.status, failed.flags, failed.count) == (0, "UF,URX", 1)
    assert failed.why.startswith("upstream connection failure")


def test_an_uneject_as_envoy_logs_it_ends_the_ejection(tmp_path: Path) -> None:
    """Envoy logs the uneject with `"enforced": false` (it enforces nothing): it must still end
    the ejection, while an ejection Envoy did not enforce never starts one. (Issue 11: after an
    ejection ended, status and the dashboard kept the replica ejected and the circuit open.)"""
    eject = {
        "type": "CONSECUTIVE_5XX",
        "cluster_name": "outbound|stats",
        "upstream_url": "127.0.0.1:1001",
        "action": "EJECT",
        "num_ejections": 1,
        "enforced": True,
        "timestamp": "2026-11-03T19:00:01Z",
    }
    uneject = {
        "type": "CONSECUTIVE_5XX",
        "cluster_name": "outbound|stats",
        "upstream_url": "127.0.0.1:1001",
        "action": "UNEJECT",
        "num_ejections": 1,
        "enforced": False,
        "timestamp": "2026-11-03T19:00:31Z",
    }
    not_enforced = eject | {"upstream_url": "127.0.0.1:1002", "enforced": False}
    c = caller(tmp_path)
    c.outlier_log.write_text(json.dumps(eject) + "\n")
    assert [e.host for e in envoys.ejections(c, "outbound|stats")] == ["127.0.0.1:1001"]
    c.outlier_log.write_text("".join(json.dumps(e) + "\n" for e in (eject, uneject, not_enforced)))
    assert envoys.ejections(c, "outbound|stats") == []


def test_no_healthy_upstream_at_start_up_is_not_called_a_circuit_open(tmp_path: Path) -> None:
    """Issue 11: at start-up, probes of an app whose callee was not ready yet read `503 UH ...
    (circuit open)`, like an outage. Only a UH while the caller had replicas ejected is one."""
    c = caller(tmp_path)
    event = {"cluster_name": "outbound|stats", "upstream_url": "127.0.0.1:1001", "num_ejections": 1}
    c.outlier_log.write_text(
        json.dumps(event | {"action": "EJECT", "enforced": True, "timestamp": "2026-11-03T19:00:10.000Z"})
        + "\n"
        + json.dumps(event | {"action": "UNEJECT", "enforced": False, "timestamp": "2026-11-03T19:00:40.000Z"})
        + "\n"
    )

    def uh(time: str) -> str:
        return json.dumps({"status": 503, "flags": "UH", "time": time, "cluster": "outbound|stats"})

    c.access_log.write_text(
        "\n".join(uh(t) for t in ("2026-11-03T19:00:01.500Z", "2026-11-03T19:00:02.000Z", "2026-11-03T19:00:20.000Z"))
        + "\n"
    )
    failures = envoys.recent_failures([c], "outbound|stats")
    assert [(f.count, f.why) for f in failures] == [(1, flags.UH_EJECTED), (2, flags.UH_NOT_READY)]
    assert "circuit open" not in flags.UH_NOT_READY
