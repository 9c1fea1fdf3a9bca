"""End-to-end: an external system (egress) reached through the side-car with the mesh's retries,
and a host nobody declared refused. The "external" server is a thread of this test on
127.0.0.1 that fails twice, then succeeds."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from mesh_runner import EXAMPLE, MeshRun, cli, running_mesh

pytestmark = pytest.mark.e2e


class Flaky(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    failures_left = 0
    attempts = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with Flaky.lock:
            Flaky.attempts += 1
            failing = Flaky.failures_left > 0
            Flaky.failures_left -= 1 if failing else 0
        body = b"hiccup" if failing else b'{"filings": 42}'
        self.send_response(503 if failing else 200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fec_api() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def egress_mesh(tmp_path_factory: pytest.TempPathFactory, fec_api: int) -> Iterator[MeshRun]:
    root = tmp_path_factory.mktemp("egress")
    mesh = root / "mesh"
    shutil.copytree(EXAMPLE, mesh)
    (mesh / "fec-api.yaml").write_text(
        "apiVersion: mesh.codifyhq.io/v1\nkind: ExternalService\nmetadata: { name: fec-api }\n"
        f"spec:\n  address: 127.0.0.1\n  allowLoopback: true\n  port: {fec_api}\n"
        "  retries: { attempts: 3, perTryTimeout: 1s, retryOn: [5xx], backoff: { baseInterval: 10ms, maxInterval: 50ms } }\n"
        "  timeout: 5s\n"
    )
    results = mesh / "results.yaml"
    results.write_text(results.read_text().replace("calls: [stats]", "calls: [stats, fec-api]"))
    with running_mesh(mesh, root / "run") as run:
        yield run


def outbound(mesh: MeshRun) -> httpx.Client:
    port = mesh.status()["services"]["results"]["replicas"][0]["sidecar"]["outbound"]
    return httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=10)


def test_an_external_system_that_fails_twice_is_reached_through_the_side_car(egress_mesh: MeshRun) -> None:
    Flaky.failures_left, Flaky.attempts = 2, 0
    with outbound(egress_mesh) as client:
        response = client.get("http://fec-api/filings")
    assert response.status_code == 200 and response.json() == {"filings": 42}
    assert Flaky.attempts == 3  # two hiccups retried by the side-car, with back-off


def test_a_host_nobody_declared_is_refused_clearly(egress_mesh: MeshRun) -> None:
    Flaky.attempts = 0
    with outbound(egress_mesh) as client:
        response = client.get("http://example-api/anything")
    assert response.status_code == 404
    assert "results may only call the services in its spec.calls (fec-api, stats)" in response.text
    assert Flaky.attempts == 0


def test_an_unknown_external_name_in_calls_is_a_validation_error(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, mesh)
    results = mesh / "results.yaml"
    results.write_text(results.read_text().replace("calls: [stats]", "calls: [stats, irs-api]"))
    result = cli("validate", str(mesh))
    assert result.returncode == 1
    assert "spec.calls[1]: unknown service 'irs-api'; known: results, stats" in result.stderr
