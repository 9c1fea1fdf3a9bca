"""The admin API's door (`api.guard`, `core.access`): no credential, no mesh.

Issue 11, as an attacker tried it: any web page could `POST /apply` with `Content-Type:
text/plain` (what an HTML form sends cross-site, no preflight) and the body `{"sources":{}}`,
and the API answered `applied` and stopped every workload; DNS rebinding reached it too. Each
test drives the real Starlette app through the guard, with a mesh that records what it was
asked to do.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from test_dashboard import FakeMesh, fake_mesh

from interstate.api import admin
from interstate.api.guard import SMALL_BODY, Guard, allowed_hosts
from interstate.config import limits
from interstate.core import access
from interstate.errors import ConfigError, Issue, PermanentError, Rejected, TemporaryError, UnknownService

PORT = 15000
BASE = f"http://127.0.0.1:{PORT}"


class RecordingMesh(FakeMesh):
    """The dashboard's fake mesh, which also records the changes it is asked for."""

    changes: list[tuple[str, str]]

    async def apply(self, config: Any, actor: str = "") -> dict[str, Any]:
        self.changes.append(("apply", actor))
        return {"started": [], "stopped": []}

    async def scale(self, service: str, replicas: int, autoscaler: bool = False, actor: str = "") -> dict[str, Any]:
        self.changes.append(("scale", actor))
        return {"started": [], "stopped": []}


def gate(tmp_path: Path) -> access.Gate:
    token_file = tmp_path / access.TOKEN_FILE
    token = access.create_token(tmp_path)
    return access.Gate(token, access.token_actor(token_file))


def scenario(
    tmp_path: Path,
    body: Callable[[httpx.AsyncClient, access.Gate, RecordingMesh], Awaitable[None]],
    kind: type[RecordingMesh] = RecordingMesh,
) -> None:
    """`body` against the admin API (behind its guard) of a fake mesh of `kind`."""

    async def run() -> None:
        _, fake, http = fake_mesh()
        mesh = kind(fake.replicas, fake.ingress)
        mesh.changes = []
        door = gate(tmp_path)
        app = Guard(admin.create_app(cast(Any, mesh)), door, allowed_hosts("127.0.0.1", PORT))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
            await body(client, door, mesh)
        await http.aclose()

    asyncio.run(run())


def bearer(door: access.Gate) -> dict[str, str]:
    return {"authorization": f"Bearer {door.token}"}


def test_the_token_file_is_private_and_new_at_every_start(tmp_path: Path) -> None:
    first = access.create_token(tmp_path)
    path = tmp_path / access.TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert access.read_token(path) == first and len(first) >= 43  # 32 random bytes
    assert access.create_token(tmp_path) != first
    assert access.token_actor(path).endswith("(admin token)")
    path.write_text("short\n")
    with pytest.raises(ValueError):
        access.read_token(path)


def test_without_the_token_nothing_is_seen_or_changed(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, door: access.Gate, mesh: RecordingMesh) -> None:
        assert (await client.get("/healthz")).status_code == 200  # says "ok", nothing more
        for path in ("/status", "/certs", "/metrics", "/audit", "/dashboard/data"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "admin token" in response.json()["error"]
        wrong = {"authorization": "Bearer " + "x" * len(door.token)}
        assert (await client.get("/status", headers=wrong)).status_code == 401
        assert (await client.get("/status", headers={"authorization": door.token})).status_code == 401  # no scheme
        # the reported attack: a cross-site form's text/plain POST
        attack = await client.post("/apply", content='{"sources":{}}', headers={"content-type": "text/plain"})
        assert attack.status_code == 401
        assert (await client.post("/services/results/scale", json={"replicas": 0})).status_code == 401
        assert mesh.changes == []
        assert (await client.get("/status", headers=bearer(door))).status_code == 200

    scenario(tmp_path, body)


def test_with_the_token_a_change_must_be_json_and_is_recorded_under_the_tokens_name(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, door: access.Gate, mesh: RecordingMesh) -> None:
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = bearer(door) | ({"content-type": media} if media else {})
            response = await client.post("/apply", content='{"sources":{}}', headers=headers)
            assert response.status_code == 415, media
        assert mesh.changes == []
        scaled = await client.post("/services/results/scale", json={"replicas": 2}, headers=bearer(door))
        assert scaled.status_code == 200, scaled.text
        charset = bearer(door) | {"content-type": "application/json; charset=utf-8"}
        assert (await client.post("/services/results/scale", content='{"replicas": 1}', headers=charset)).is_success
        assert mesh.changes == [("scale", door.actor), ("scale", door.actor)]
        assert door.actor.endswith("(admin token)") and "127.0.0.1" not in door.actor

    scenario(tmp_path, body)


def test_a_request_for_another_host_is_refused_whatever_it_carries(tmp_path: Path) -> None:
    """DNS rebinding: a page on evil.example re-points its name at 127.0.0.1; the browser then
    sends `Host: evil.example:15000`."""

    async def body(client: httpx.AsyncClient, door: access.Gate, mesh: RecordingMesh) -> None:
        for host in ("evil.example:15000", "127.0.0.1:15001", "127.0.0.1", "localhost.evil.example:15000", ""):
            response = await client.get("/status", headers=bearer(door) | {"host": host})
            assert response.status_code == 403, host
            assert "not this API's address" in response.json()["error"]
        for host in ("127.0.0.1:15000", "localhost:15000", "LOCALHOST:15000"):
            assert (await client.get("/status", headers=bearer(door) | {"host": host})).status_code == 200, host

    scenario(tmp_path, body)
    assert allowed_hosts("0.0.0.0", PORT) is None  # every address: the token alone decides
    assert allowed_hosts("::1", PORT) == {"[::1]:15000", "localhost:15000"}
    assert allowed_hosts("10.0.0.5", PORT) == {"10.0.0.5:15000"}


def test_bodies_past_the_limit_are_refused_before_they_are_read(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, door: access.Gate, mesh: RecordingMesh) -> None:
        declared = bearer(door) | {"content-type": "application/json"}
        big = await client.post(
            "/apply", headers=declared | {"content-length": str(limits.MAX_REQUEST_BYTES + 1)}, content=b"{}"
        )
        assert big.status_code == 413 and "over the limit" in big.json()["error"]

        async def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(SMALL_BODY // 1024 + 2):
                yield b" " * 1024

        streamed = await client.post("/services/results/scale", headers=declared, content=chunks())
        assert streamed.status_code == 413
        assert mesh.changes == []

    scenario(tmp_path, body)


def test_a_sign_in_link_works_once_and_gives_a_read_only_session(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, door: access.Gate, mesh: RecordingMesh) -> None:
        page = await client.get("/dashboard")
        assert page.status_code == 401 and "interstate dashboard" in page.text
        code = access.login_code(door.token)
        signed_in = await client.get(f"/dashboard?login={code}")
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard"
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        session = {"cookie": cookie.split(";")[0]}
        assert (await client.get("/dashboard", headers=session)).status_code == 200
        data = await client.get("/dashboard/data", headers=session)
        assert data.status_code == 200 and json.loads(data.text)["services"]
        # read-only: the session opens nothing else, least of all a change
        assert (await client.get("/status", headers=session)).status_code == 401
        post = session | {"content-type": "application/json"}
        assert (await client.post("/services/results/scale", json={"replicas": 0}, headers=post)).status_code == 401
        assert mesh.changes == []
        # once: the same link again, a forged one, an expired one, one of another token
        client.cookies.clear()  # (httpx kept the session cookie; a browser without it)
        assert (await client.get(f"/dashboard?login={code}")).status_code == 401
        expires, nonce, sig = code.split(".")
        forged = f"{expires}.{nonce}x.{sig}"
        assert (await client.get(f"/dashboard?login={forged}")).status_code == 401
        assert (await client.get(f"/dashboard?login={access.login_code(door.token, -1)}")).status_code == 401
        other = access.login_code("y" * 43)
        assert (await client.get(f"/dashboard?login={other}")).status_code == 401
        stale = {"cookie": f"{access.SESSION_COOKIE}={access.session_cookie(door.token, now=0)}"}
        assert (await client.get("/dashboard/data", headers=stale)).status_code == 401

    scenario(tmp_path, body)


def test_the_cli_needs_the_token_and_says_where_it_looked(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from interstate.cli import main

    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERSTATE_")}
    missing = tmp_path / "nowhere" / access.TOKEN_FILE
    result = CliRunner(env=env).invoke(main, ["status", "--token-file", str(missing)])
    assert result.exit_code == 2
    assert f"no admin token at {missing}" in result.output and "--token-file" in result.output
    access.create_token(tmp_path)
    link = CliRunner(env=env).invoke(main, ["dashboard", "--token-file", str(tmp_path / access.TOKEN_FILE)])
    assert link.exit_code == 0 and link.output.startswith(f"http://127.0.0.1:{PORT}/dashboard?login=")
    code = link.output.strip().split("login=")[1]
    assert access.Gate(access.read_token(tmp_path / access.TOKEN_FILE)).redeem(code)


def test_a_request_head_that_never_ends_is_cut_off_and_a_real_request_still_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: uvicorn waited forever for a head that trickles (its keep-alive timer stops at the
    first byte). The admin API closes a connection whose head is not whole in time, like the
    ingress does, and serves everyone else meanwhile."""
    import socket

    from interstate.api import protocol

    monkeypatch.setattr(protocol, "HEAD_TIMEOUT_S", 0.5)

    async def run() -> None:
        _, fake, http = fake_mesh()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        server = admin.AdminServer(admin.create_app(cast(Any, fake)), listener, gate(tmp_path))
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            slow = [socket.create_connection((server.host, server.port)) for _ in range(3)]
            slow[0].sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: never ends
            slow[1].sendall(b"GE")  # a byte at a time, and then nothing
            started = loop.time()
            for conn in slow:
                conn.setblocking(False)
                assert await asyncio.wait_for(loop.sock_recv(conn, 100), 5) == b""  # closed unanswered
            assert loop.time() - started < 3
            async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
                assert (await client.get("/healthz")).status_code == 200
                await asyncio.sleep(0.8)  # a kept-alive connection's next head has its deadline too
                assert (await client.get("/healthz")).status_code == 200  # (a fresh connection if closed)
            for conn in slow:
                conn.close()
        finally:
            await server.stop()
            await http.aclose()

    asyncio.run(run())


EXAMPLE_WORKLOAD = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: results}
spec: {port: 8080, run: {command: [python, app.py]}}
"""


ISSUE = Issue("m.yaml", 1, "Workload results", "spec.replicas", "too many")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (TemporaryError("the control plane is busy"), 503),
        (PermanentError("refused"), 409),
        (UnknownService("no service 'ballots'"), 404),
        (Rejected({"sidecar~stats-0": ["bad listener"]}), 409),
        (ConfigError([ISSUE]), 422),
    ],
    ids=["temporary", "permanent", "unknown-service", "rejected", "config"],
)
def test_the_same_error_gives_the_same_status_on_every_route_that_changes_the_mesh(
    tmp_path: Path, error: Exception, status: int
) -> None:
    """Issue 22: a TemporaryError was 503 for scale but 409 for fault and split."""

    class Failing(RecordingMesh):
        mesh_dir = tmp_path

        async def apply(self, config: Any, actor: str = "") -> dict[str, Any]:
            raise error

        async def scale(self, service: str, replicas: int, autoscaler: bool = False, actor: str = "") -> dict[str, Any]:
            raise error

        async def set_fault(self, service: str, fault: Any, actor: str = "") -> dict[str, Any]:
            raise error

        async def set_split(self, service: str, weights: dict[str, int], actor: str = "") -> dict[str, Any]:
            raise error

    async def body(client: httpx.AsyncClient, door: access.Gate, mesh: RecordingMesh) -> None:
        calls = [
            ("/apply", {"sources": {"m.yaml": EXAMPLE_WORKLOAD}}),
            ("/services/results/scale", {"replicas": 2}),
            ("/services/results/fault", {"fault": {"abort": {"percent": 50}}}),
            ("/services/results/split", {"weights": {"results": 100}}),
        ]
        answers = [await client.post(path, json=payload, headers=bearer(door)) for path, payload in calls]
        assert [a.status_code for a in answers] == [status] * len(calls), [a.text for a in answers]
        assert all(a.json()["error"] for a in answers)
        if isinstance(error, Rejected):
            assert all(a.json()["nacks"] == error.nacks for a in answers)
        if isinstance(error, ConfigError):
            assert all(a.json()["issues"][0]["field"] == "spec.replicas" for a in answers)

    scenario(tmp_path, body, Failing)
