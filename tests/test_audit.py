"""The audit trail without a running mesh: the hash chain and its canonical form, `verify` against
each kind of tampering, a trail continued by a later run, what details may hold, and the hooks
that need no processes (supervisor refusals, the autoscaler's decisions, the ADS server's NACKs,
`interstate audit`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from click.testing import CliRunner
from helpers_xds import AdsClient, run
from test_xds_protocol import NAMES, NODE, every_type_changed, first, subscribe_all

from interstate import audit
from interstate.cli import main
from interstate.config import load
from interstate.core.plane import ControlPlane
from interstate.core.status import ControlPlaneInfo
from interstate.errors import ConfigError, PermanentError, UnknownService
from interstate.model.traffic_policy import Fault
from interstate.settings import Settings
from interstate.standalone.autoscaler import Autoscaler, Scaler, _Loop
from interstate.standalone.mesh import StandaloneMesh
from interstate.standalone.protocol import UnitSpec, UnitStatus
from interstate.xds import resources as rt
from interstate.xds.cache import SnapshotCache
from interstate.xds.server import AdsServer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "election-night"


def clock() -> Callable[[], str]:
    ticks = iter(range(10_000))
    return lambda: f"2025-11-04T20:00:{next(ticks) % 60:02d}.000Z"


def trail(tmp_path: Path, n: int = 5) -> Path:
    """A trail of `n` records: scale stats 1 → 2 → ... by one actor."""
    log = audit.AuditLog(tmp_path / audit.FILE_NAME, clock())
    for i in range(n):
        log.record("admin-api 127.0.0.1", "replicas.scale", "stats", {"from": i + 1, "to": i + 2})
    return log.path


def rows(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


# ---- the chain -------------------------------------------------------------------------------


def test_each_record_holds_the_hash_of_the_one_before(tmp_path: Path) -> None:
    path = trail(tmp_path, 3)
    records = [json.loads(line) for line in rows(path)]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == audit.GENESIS == "0" * 64
    assert [r["prev"] for r in records[1:]] == [r["hash"] for r in records[:-1]]
    first_record = records[0]
    assert first_record == {
        "seq": 1,
        "time": "2025-11-04T20:00:00.000Z",
        "actor": "admin-api 127.0.0.1",
        "action": "replicas.scale",
        "target": ["stats"],
        "outcome": "ok",
        "detail": {"from": 1, "to": 2},
        "prev": audit.GENESIS,
        "hash": first_record["hash"],
    }
    # the documented canonical form, computed here without the module's help
    body = {k: v for k, v in first_record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first_record["hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert audit.read_head(audit.head_path(path)) == (3, records[2]["hash"])
    assert audit.verify(path) == audit.Verification(3, records[2]["hash"])
    assert str(audit.verify(path)) == "audit trail intact: 3 records, chain ok"


def test_the_hash_is_over_content_not_over_the_bytes_of_the_line(tmp_path: Path) -> None:
    path = trail(tmp_path, 2)
    audit.AuditLog(path).record("admin-api 127.0.0.1", "split.set", "results", {"weights": {"résultats": 100}})
    assert "résultats" in path.read_text()
    # other key order, other spacing, non-ASCII escaped: the same records, the same chain
    respelled = [
        json.dumps(dict(reversed(json.loads(line).items())), separators=(", ", " : "), ensure_ascii=True) + "\n"
        for line in rows(path)
    ]
    write(path, respelled)
    assert "r\\u00e9sultats" in path.read_text()
    assert audit.verify(path).ok


def test_a_new_run_continues_the_chain(tmp_path: Path) -> None:
    path = trail(tmp_path, 2)
    last = json.loads(rows(path)[-1])
    again = audit.AuditLog(path)  # as a new `interstate up` creates it
    record = again.record("interstate up", "mesh.start", ["results", "stats"])
    assert record is not None
    assert (record["seq"], record["prev"]) == (3, last["hash"])
    assert audit.verify(path).records == 3 and audit.verify(path).ok


def test_two_writers_on_one_trail_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / audit.FILE_NAME
    one, other = audit.AuditLog(path), audit.AuditLog(path)  # e.g. two meshes started on one folder
    for writer in (one, other, one, one, other):
        writer.record(audit.UP, "mesh.start", [])
    assert [r["seq"] for r in audit.read(path)] == [1, 2, 3, 4, 5]
    assert audit.verify(path).ok


def test_nothing_is_created_before_the_first_record(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path / "run" / audit.FILE_NAME)
    assert not (tmp_path / "run").exists()
    log.record("autoscaler", "autoscaler.scale", "results", {"from": 2, "to": 3})
    assert audit.verify(log.path).ok


# ---- tampering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("outcome", "refused: nobody asked"), ("actor", "autoscaler"), ("time", "2025-11-04T19:00:00.000Z")],
)
def test_an_edited_field_is_named(tmp_path: Path, field: str, value: str) -> None:
    path = trail(tmp_path)
    lines = rows(path)
    record = json.loads(lines[2])
    record[field] = value
    lines[2] = json.dumps(record) + "\n"
    write(path, lines)
    result = audit.verify(path)
    assert not result.ok and result.bad_seq == 3 and result.records == 2
    assert str(result) == "audit trail broken at record 3: record 3 was altered: its hash does not match its content"


def test_an_edited_detail_is_named_too(tmp_path: Path) -> None:
    path = trail(tmp_path)
    write(path, [line.replace('"to": 5', '"to": 50') for line in rows(path)])
    assert audit.verify(path).bad_seq == 4


def test_a_record_edited_with_its_hash_recomputed_breaks_the_next_link(tmp_path: Path) -> None:
    path = trail(tmp_path)
    lines = rows(path)
    record = json.loads(lines[1])
    record["outcome"] = "refused: forged"
    record["hash"] = audit.record_hash(record)
    lines[1] = json.dumps(record) + "\n"
    write(path, lines)
    result = audit.verify(path)
    assert result.bad_seq == 3
    assert "record 3 does not follow record 2" in result.problem


@pytest.mark.parametrize("index", [0, 2])
def test_a_deleted_line_is_found(tmp_path: Path, index: int) -> None:
    path = trail(tmp_path)
    lines = rows(path)
    del lines[index]
    write(path, lines)
    result = audit.verify(path)
    assert result.bad_seq == index + 1
    assert f"holds record {index + 2} where record {index + 1} belongs" in result.problem


def test_swapped_lines_are_found(tmp_path: Path) -> None:
    path = trail(tmp_path)
    lines = rows(path)
    lines[1], lines[2] = lines[2], lines[1]
    write(path, lines)
    result = audit.verify(path)
    assert result.bad_seq == 2 and "holds record 3 where record 2 belongs" in result.problem


def test_an_inserted_line_is_found(tmp_path: Path) -> None:
    path = trail(tmp_path)
    lines = rows(path)
    write(path, [*lines[:2], lines[1], *lines[2:]])
    assert audit.verify(path).bad_seq == 3
    write(path, [*lines[:2], "# reviewed by J.\n", *lines[2:]])
    result = audit.verify(path)
    assert result.bad_seq == 3 and result.problem == "line 3 is not an audit record"


def test_a_file_cut_inside_a_record_is_found(tmp_path: Path) -> None:
    path = trail(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    result = audit.verify(path)
    assert result.bad_seq == 5 and result.records == 4
    assert "line 5 is cut off" in result.problem


def test_records_cut_off_the_end_are_found_by_the_head(tmp_path: Path) -> None:
    path = trail(tmp_path)
    write(path, rows(path)[:3])  # whole lines: the chain alone cannot tell
    result = audit.verify(path)
    assert result.bad_seq == 4
    assert "records 4..5 are missing from the end (audit.head says the trail reached 5)" in result.problem


def test_a_missing_head_is_reported(tmp_path: Path) -> None:
    path = trail(tmp_path)
    audit.head_path(path).unlink()
    result = audit.verify(path)
    assert not result.ok and result.bad_seq is None
    assert "audit.head is missing" in str(result)


def test_a_trail_rewritten_from_the_start_does_not_match_the_head(tmp_path: Path) -> None:
    path = trail(tmp_path, 3)
    head = audit.head_path(path).read_text()
    path.unlink()
    audit.head_path(path).unlink()
    forged = audit.AuditLog(path)  # a consistent chain of three other records
    for _ in range(3):
        forged.record("admin-api 127.0.0.1", "replicas.scale", "stats", {"from": 1, "to": 1})
    assert audit.verify(path).ok
    audit.head_path(path).write_text(head)  # ... but the head kept from before names another record 3
    result = audit.verify(path)
    assert result.bad_seq == 3 and "record 3 is not the one audit.head names: the trail was rewritten" in result.problem


def test_a_damaged_trail_stays_damaged_after_a_restart(tmp_path: Path) -> None:
    path = trail(tmp_path)
    write(path, rows(path)[:3])  # records 4 and 5 removed
    log = audit.AuditLog(path)
    record = log.record("interstate up", "mesh.start", [], {"trail_before": audit.integrity(path)})
    assert record is not None and record["seq"] == 6  # the gap stays: never renumbered over
    assert "records 4..5 are missing" in record["detail"]["trail_before"]
    result = audit.verify(path)
    assert result.bad_seq == 4 and "holds record 6 where record 4 belongs" in result.problem


def test_a_torn_last_line_is_kept_and_the_next_record_starts_a_new_line(tmp_path: Path) -> None:
    path = trail(tmp_path, 3)
    with open(path, "ab") as out:
        out.write(b'{"seq": 4, "time": "2025-')  # a crash in the middle of a write
    record = audit.AuditLog(path).record("interstate up", "mesh.start", [])
    assert record is not None and record["seq"] == 4
    assert rows(path)[3] == '{"seq": 4, "time": "2025-\n'
    result = audit.verify(path)
    assert result.bad_seq == 4 and result.problem == "line 4 is not an audit record"


# ---- what a record may hold ----------------------------------------------------------------


def test_details_hold_no_key_material_and_stay_small(tmp_path: Path) -> None:
    log = audit.AuditLog(tmp_path / audit.FILE_NAME)
    pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----"
    record = log.record(
        "envoy stats-0",
        "xds.nack",
        "stats-0",
        {"message": f"bad secret {pem} rejected", "long": "x" * 5000, "rate": 298.88888, "nan": float("nan")},
        "refused: " + "y" * 1000,
    )
    assert record is not None
    text = log.path.read_text()
    assert "PRIVATE KEY" not in text and "MIGHAgEA" not in text
    assert record["detail"]["message"] == "bad secret [PEM block removed] rejected"
    assert len(record["detail"]["long"]) == audit.MAX_TEXT
    assert record["detail"]["rate"] == 298.889 and record["detail"]["nan"] == "nan"
    assert len(record["outcome"]) == audit.MAX_OUTCOME
    assert audit.verify(log.path).ok


def test_apply_details_name_refs_and_the_config_digest() -> None:
    config = load(EXAMPLE)
    policy = next(r for r in config.resources if r.ref == "TrafficPolicy stats-breaker")
    spec = policy.spec.model_copy(update={"fault": Fault.model_validate({"abort": {"percent": 10}})})
    changed = config.replace(policy, policy.model_copy(update={"spec": spec}))
    detail = audit.apply_detail(config, changed)
    assert detail["changed"] == ["TrafficPolicy stats-breaker"] and detail["added"] == detail["removed"] == []
    assert detail["config_sha256"] == audit.config_digest(changed) != audit.config_digest(config)
    reordered = type(config)(tuple(reversed(config.resources)))
    assert audit.config_digest(reordered) == audit.config_digest(config)  # file order does not count
    assert audit.touched(audit.apply_detail(changed, reordered)) == ["TrafficPolicy stats-breaker"]


def test_a_trail_that_cannot_be_written_does_not_stop_the_change(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file where the run folder should be")
    log = audit.AuditLog(tmp_path / "run" / audit.FILE_NAME)
    assert log.record("autoscaler", "autoscaler.scale", "results") is None
    assert log.failures == 1


def test_records_since_a_seq(tmp_path: Path) -> None:
    path = trail(tmp_path, 4)
    assert [r["seq"] for r in audit.read(path, since=2)] == [3, 4]
    assert audit.read(tmp_path / "nothing.jsonl") == []


# ---- hooks that need no processes ------------------------------------------------------------


def settings(tmp_path: Path) -> Settings:
    return Settings(mesh_dir=EXAMPLE, run_dir=tmp_path / "run").auto_ports()


class NoRunner:
    """A supervisor that must not be asked for anything: every change below is refused first."""

    async def start(self, spec: UnitSpec) -> UnitStatus:
        raise AssertionError(f"asked to start {spec.name}")

    async def drain(self, names: list[str], timeout: float) -> None:
        raise AssertionError(f"asked to drain {names}")

    async def stop(self, names: list[str]) -> None:
        raise AssertionError(f"asked to stop {names}")


def test_refused_changes_are_recorded_with_their_actor(tmp_path: Path) -> None:
    config = load(EXAMPLE)

    async def body() -> None:
        run = settings(tmp_path)
        core = ControlPlane(run.identity(), run.run_dir / audit.FILE_NAME)
        supervisor = StandaloneMesh(run, config, core, NoRunner(), ControlPlaneInfo(pid=1))
        try:
            with pytest.raises(UnknownService):
                await supervisor.set_fault("nosuch", Fault.model_validate({"abort": {"percent": 10}}), actor="ops")
            with pytest.raises(PermanentError, match="HorizontalPodAutoscaler results-hpa"):
                await supervisor.scale("results", 5, actor="admin-api 127.0.0.1")
            stats = next(r for r in config.resources if r.ref == "Workload stats")
            run_spec = stats.spec.runs().model_copy(update={"working_dir": "no-such-folder"})
            broken = stats.model_copy(update={"spec": stats.spec.model_copy(update={"run": run_spec})})
            with pytest.raises(ConfigError):
                await supervisor.apply(config.replace(stats, broken), actor="admin-api 127.0.0.1")
        finally:
            await supervisor.http.aclose()

    asyncio.run(body())
    records = audit.read(tmp_path / "run" / audit.FILE_NAME)
    assert [(r["actor"], r["action"], r["target"]) for r in records] == [
        ("ops", "fault.set", ["nosuch"]),
        ("admin-api 127.0.0.1", "replicas.scale", ["results"]),
        ("admin-api 127.0.0.1", "config.apply.rejected", ["Workload stats"]),
    ]
    assert records[0]["outcome"].startswith("refused: no workload named 'nosuch'")
    assert records[0]["detail"]["fault"].startswith("10% of calls get 503")
    assert records[1]["detail"]["from"] == 2 and records[1]["detail"]["to"] == 5
    assert records[2]["outcome"].startswith("refused: 1 issue(s) in the mesh files: ")
    assert "spec.run.workingDir" in records[2]["detail"]["issues"][0]
    assert records[2]["detail"]["changed"] == ["Workload stats"]
    assert audit.verify(tmp_path / "run" / audit.FILE_NAME).ok


class FakeMesh:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.replicas: dict[str, list[Any]] = {}

    async def scale(self, service: str, replicas: int, autoscaler: bool = False) -> dict[str, Any]:
        if self.fail:
            raise PermanentError("no free port")
        return {"started": [f"{service}-2"], "stopped": []}


@pytest.mark.parametrize("fail", [False, True])
def test_the_autoscaler_records_its_decisions_with_their_inputs(tmp_path: Path, fail: bool) -> None:
    log = audit.AuditLog(tmp_path / audit.FILE_NAME)
    loop = _Loop()
    loop.last = {
        "at": "2025-11-04T20:00:00+00:00",
        "from": 2,
        "to": 3,
        "reason": "requests_per_second/replica 150.0 vs target 100",
        "metrics": [{"name": "requests_per_second", "current": 150.0, "target": 100.0, "proposal": 3}],
    }

    async def body() -> None:
        async with httpx.AsyncClient() as http:
            scaler = Autoscaler(cast(Scaler, FakeMesh(fail)), 1.0, http, audit_log=log)
            await scaler._scale("results", 3, loop, loop.state)

    asyncio.run(body())
    (record,) = audit.read(log.path)
    assert (record["actor"], record["action"], record["target"]) == ("autoscaler", "autoscaler.scale", ["results"])
    assert record["detail"]["reason"] == "requests_per_second/replica 150.0 vs target 100"
    assert record["detail"]["metrics"][0]["current"] == 150.0
    assert (record["detail"]["from"], record["detail"]["to"]) == (2, 3)
    if fail:
        assert record["outcome"] == "refused: no free port"
    else:
        assert record["outcome"] == "ok" and record["detail"]["started"] == ["results-2"]


def test_the_ads_server_reports_each_nack() -> None:
    nacks: list[tuple[str, str, str, str]] = []

    async def body() -> None:
        cache = SnapshotCache()
        good = first()
        cache.set(NODE, good)
        server = AdsServer(cache, on_nack=lambda *args: nacks.append(args))
        await server.start("127.0.0.1", 0)
        try:
            async with AdsClient(server.port, NODE) as client:
                await subscribe_all(client)
                rejected = every_type_changed()
                cache.set(NODE, rejected)
                pushed = {(resp := await client.recv()).type_url: resp for _ in rt.ORDER}
                await client.send(
                    rt.CLUSTER,
                    version=good.version(rt.CLUSTER),
                    nonce=pushed[rt.CLUSTER].nonce,
                    names=NAMES[rt.CLUSTER],
                    error="cluster outbound|audit: connect_timeout must be greater than 0s",
                )
                await client.expect_nothing()
                assert nacks == [
                    (
                        NODE,
                        "CDS",
                        rejected.version(rt.CLUSTER),
                        "cluster outbound|audit: connect_timeout must be greater than 0s",
                    )
                ]
        finally:
            await server.stop(0)

    run(body())


def test_a_failing_nack_listener_does_not_end_the_stream() -> None:
    def explode(*args: str) -> None:
        raise RuntimeError("listener bug")

    async def body() -> None:
        cache = SnapshotCache()
        good = first()
        cache.set(NODE, good)
        server = AdsServer(cache, on_nack=explode)
        await server.start("127.0.0.1", 0)
        try:
            async with AdsClient(server.port, NODE) as client:
                await subscribe_all(client)
                cache.set(NODE, every_type_changed())
                pushed = {(resp := await client.recv()).type_url: resp for _ in rt.ORDER}
                await client.send(
                    rt.CLUSTER, version=good.version(rt.CLUSTER), nonce=pushed[rt.CLUSTER].nonce, error="no"
                )
                await client.expect_nothing()
                cache.set(NODE, good)  # the stream still serves: the good version goes out again
                assert (await client.recv()).type_url in rt.ORDER
        finally:
            await server.stop(0)

    run(body())


# ---- interstate audit ------------------------------------------------------------------------


def test_the_command_lists_and_verifies(tmp_path: Path) -> None:
    path = trail(tmp_path, 3)
    runner = CliRunner()
    listed = runner.invoke(main, ["audit", "--run-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == [
        "1",
        "2025-11-04T20:00:00.000Z",
        "admin-api",
        "127.0.0.1",
        "replicas.scale",
        "stats",
        "ok",
        "(1",
        "→",
        "2)",
    ]
    last = runner.invoke(main, ["audit", "--run-dir", str(tmp_path), "--last", "1", "--json"])
    assert [r["seq"] for r in json.loads(last.output)] == [3]
    ok = runner.invoke(main, ["audit", "--run-dir", str(tmp_path), "--verify"])
    assert ok.exit_code == 0 and ok.output.startswith("audit trail intact: 3 records, chain ok\n")
    write(path, [rows(path)[0], rows(path)[2]])
    bad = runner.invoke(main, ["audit", "--run-dir", str(tmp_path), "--verify"])
    assert bad.exit_code == 1
    assert "audit trail broken at record 2: line 2 holds record 3 where record 2 belongs" in bad.output
    missing = runner.invoke(main, ["audit", "--run-dir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no audit trail at" in missing.output


def test_an_unreadable_line_is_shown_not_skipped(tmp_path: Path) -> None:
    path = trail(tmp_path, 2)
    write(path, [rows(path)[0], "garbage\n", rows(path)[1]])
    listed = CliRunner().invoke(main, ["audit", "--run-dir", str(tmp_path)])
    assert "line 2: not a readable record" in listed.output
