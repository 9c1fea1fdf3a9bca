"""What a restarted control plane reads back must be what the previous one had: the mesh config
(every kind, every optional section), the settings, the units' specs, and the certificates it
issued (the same ones, so Envoys see no change; none that a different CA signed)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from jwt_tokens import Signer
from test_envoy_validate import ALL_VARIANTS, mesh_config

from interstate.ca.authority import Authority, utcnow
from interstate.ca.store import CertStore
from interstate.compile import Proxy
from interstate.config import load
from interstate.core.plane import ControlPlane
from interstate.core.status import ControlPlaneInfo, ReplicaState
from interstate.errors import ConfigError, ControlPlaneAway, PermanentError
from interstate.model import TokenPolicy
from interstate.settings import Settings
from interstate.standalone import state
from interstate.standalone.mesh import StandaloneMesh
from interstate.standalone.protocol import AppSpec, Channel, EnvoySpec, UnitSpec, UnitStatus

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "election-night"


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_every_mesh_variant_reads_back_equal(tmp_path: Path, name: str) -> None:
    config = mesh_config(name)
    state.save_config(tmp_path, config)
    again = state.load_config(tmp_path)
    assert again == config
    assert again.origins == config.origins
    assert os.stat(tmp_path / "state" / "config.json").st_mode & 0o077 == 0


def test_a_damaged_saved_config_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    state.save_config(tmp_path, load(EXAMPLE))
    path = tmp_path / "state" / "config.json"
    path.write_text(path.read_text().replace('"Workload"', '"Workloud"', 1))
    with pytest.raises(ConfigError, match=r"state/config.json: the saved mesh config cannot be read back"):
        state.load_config(tmp_path)


def test_settings_read_back_equal(tmp_path: Path) -> None:
    settings = Settings(
        mesh_dir=EXAMPLE, run_dir=tmp_path, ca_cert=tmp_path / "ca.pem", cert_ttl=timedelta(minutes=3)
    ).auto_ports()
    state.save_settings(settings)
    assert state.load_settings(tmp_path) == settings


def unit() -> UnitStatus:
    proxy = Proxy.sidecar("stats", 3, inbound_port=1001, outbound_port=1002, app_port=1003)
    app = AppSpec(("python", "app.py"), {"PORT": "1003"}, "/tmp", "/tmp/a.log", 1003, "/ready", 30.0)
    envoy = EnvoySpec("/tmp/b.json", "/tmp/stats-3.admin", "/tmp/e.log", "/tmp/o.log")
    spec = UnitSpec("stats-3", "stats", 3, "v2", "abc", proxy, app, envoy)
    return UnitStatus(spec, ReplicaState.READY, 11, 12, {"app": 2})


def test_units_cross_the_channel_unchanged() -> None:
    status = unit()
    assert UnitStatus.from_json(json.loads(json.dumps(status.to_json()))) == status
    assert sorted(status.spec.ports()) == [1001, 1002, 1003]  # no admin port: it listens on a socket


def test_a_unit_saved_by_an_older_version_reads_back_with_no_admin_socket() -> None:
    # its Envoy's admin was a TCP port: adoption finds no socket answering and replaces the unit
    saved = unit().to_json()
    del saved["spec"]["envoy"]["admin"]
    saved["spec"]["envoy"]["admin_port"] = 1004
    assert UnitStatus.from_json(saved).spec.admin == ""


def test_the_channel_answers_requests_both_ways_and_fails_them_when_the_peer_goes() -> None:
    async def scenario() -> None:
        a_sock, b_sock = socket.socketpair()
        events: list[tuple[str, dict[str, Any]]] = []

        async def a_handle(op: str, args: dict[str, Any]) -> dict[str, Any]:
            if op == "echo":
                return {"got": args}
            raise PermanentError(f"no {op}")

        async def b_handle(op: str, args: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(10)  # never answers before the peer is gone
            return {}

        a = await Channel.over_socket(a_sock, a_handle, lambda e, args: events.append((e, args)))
        b = await Channel.over_socket(b_sock, b_handle, lambda e, args: events.append((e, args)))
        tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
        assert await b.request("echo", x=1) == {"got": {"x": 1}}
        with pytest.raises(PermanentError, match="no nope"):
            await b.request("nope")
        b.notify("unit", unit=unit().to_json())
        pending = asyncio.create_task(a.request("slow"))
        await asyncio.sleep(0.1)
        assert events and events[0][0] == "unit"
        assert UnitStatus.from_json(events[0][1]["unit"]) == unit()
        await b.close()
        with pytest.raises(ControlPlaneAway):
            await pending
        await a.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())


def test_certificates_are_kept_and_served_again_until_due(tmp_path: Path) -> None:
    now = utcnow()
    authority = Authority.create("fec.gov.local", now)
    store = CertStore(authority, timedelta(minutes=10), tmp_path / "svid")
    first = store.current("sidecar~stats-0", "spiffe://fec.gov.local/ns/default/sa/stats", now)
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "svid").iterdir())
    again = CertStore(authority, timedelta(minutes=10), tmp_path / "svid")
    assert again.current("sidecar~stats-0", first.identity, now + timedelta(minutes=1)) == first
    assert again.issued_total == 0
    rotated = again.current("sidecar~stats-0", first.identity, now + timedelta(minutes=6))
    assert rotated.serial != first.serial
    # a store under another CA does not serve what this one issued
    other = CertStore(Authority.create("fec.gov.local", now), timedelta(minutes=10), tmp_path / "svid")
    assert other.items() == []
    # a proxy that is gone takes its file with it
    again.keep_only(set())
    assert list((tmp_path / "svid").iterdir()) == []


def test_a_jwks_read_from_a_file_is_kept_as_the_keys_themselves(tmp_path: Path) -> None:
    signer = Signer()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(signer.jwks())
    policy = """
apiVersion: mesh.codifyhq.io/v1
kind: TokenPolicy
metadata: {name: tokens}
spec:
  issuers: [{issuer: https://idp.example, audiences: [results], jwks: {file: keys/jwks.json}}]
  require: [{pathPrefix: /results}]
"""
    (tmp_path / "mesh.yaml").write_text(policy)
    config = load(tmp_path / "mesh.yaml")
    state.save_config(tmp_path / "run", config)
    (tmp_path / "keys" / "jwks.json").unlink()  # the restart does not need the file any more
    again = state.load_config(tmp_path / "run")
    (before,), (after,) = config.of_kind(TokenPolicy), again.of_kind(TokenPolicy)
    assert after.spec.issuers[0].jwks.text == before.spec.issuers[0].jwks.text == signer.jwks()


def test_work_the_peer_asked_for_finishes_when_the_peer_goes() -> None:
    """A drain or stop the control plane asked for must not be cut short by its death: a unit
    half-stopped would stay DRAINING for good."""

    async def scenario() -> None:
        a_sock, b_sock = socket.socketpair()
        finished = asyncio.Event()

        async def slow_stop(op: str, args: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(0.3)
            finished.set()
            return {}

        async def nothing(op: str, args: dict[str, Any]) -> dict[str, Any]:
            return {}

        supervisor = await Channel.over_socket(a_sock, slow_stop, lambda e, a: None)
        plane = await Channel.over_socket(b_sock, nothing, lambda e, a: None)
        tasks = [asyncio.create_task(supervisor.run()), asyncio.create_task(plane.run())]
        asking = asyncio.create_task(plane.request("stop", names=["stats-1"]))
        await asyncio.sleep(0.05)
        await plane.close()  # the control plane dies mid-request
        await supervisor.close()
        with pytest.raises(ControlPlaneAway):
            await asking
        await asyncio.wait_for(finished.wait(), 2)  # the stop was carried out all the same
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())


class RecordingRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def start(self, spec: UnitSpec) -> UnitStatus:
        self.calls.append(("start", [spec.name]))
        return UnitStatus(spec, ReplicaState.READY, 1, 2)

    async def drain(self, names: list[str], timeout: float) -> None:
        self.calls.append(("drain", names))

    async def stop(self, names: list[str]) -> None:
        self.calls.append(("stop", names))


def test_a_restarted_control_plane_finishes_a_retirement_its_predecessor_began(tmp_path: Path) -> None:
    config = load(EXAMPLE)
    settings = Settings(mesh_dir=EXAMPLE, run_dir=tmp_path / "run", ca_dir=tmp_path / "ca").auto_ports()

    async def scenario() -> list[tuple[str, list[str]]]:
        core = ControlPlane(settings.identity(), settings.run_dir / "audit.jsonl")
        await core.start("127.0.0.1", 0, "fec.gov.local")
        runner = RecordingRunner()
        again = StandaloneMesh(settings, config, core, runner, ControlPlaneInfo(pid=2, restarts=1))
        again.reconnect_wait_s = 0.1
        # what the supervisor reports: the units the previous control plane had it run
        specs = [again._new_replica(again.workload(name)) for name in ("results", "results", "stats", "stats")]
        units = [UnitStatus(s, ReplicaState.READY, 10 + i, 20 + i) for i, s in enumerate(specs)]
        units[3] = units[3].with_state(ReplicaState.DRAINING)  # stats-1 was being scaled away
        again.adopt(units)
        await again.resume()
        for task in (again._autoscaling, again._rotation):
            assert task is not None
            task.cancel()
        await asyncio.gather(again._autoscaling, again._rotation, return_exceptions=True)
        assert sorted(again.units) == ["results-0", "results-1", "stats-0"]
        await again.http.aclose()
        await core.stop()
        return runner.calls

    calls = asyncio.run(scenario())
    assert calls == [("drain", ["stats-1"]), ("stop", ["stats-1"])]  # nothing started: the rest fits the config
