"""End-to-end: the header allow-list at the mesh boundary and calls to undeclared hosts.

Two relay apps (tests/apps/relay_app.py) forward every header they get — the careless app the
allow-list must protect against — and record every header they see. An "external system" is a
thread of this test on 127.0.0.1 that records headers too.

    client --ingress--> front --side-car--> back
                          \\--side-car--> fec-api (ExternalService) or an undeclared host
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from mesh_runner import ROOT, MeshRun, cli, running_mesh, wait_for
from netns import other_host

from interstate.standalone.ports import host_addresses

pytestmark = pytest.mark.e2e

APPS = ROOT / "tests" / "apps"
SECRET = "123-45-6789"
OUTSIDE_HOST = "127.0.0.2"


class Outside(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        Outside.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b'{"filings": 42}'
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def outside() -> Iterator[int]:
    """The external system, on 127.0.0.2 (apps reach 127.0.0.1 and localhost directly, not
    through their side-car: NO_PROXY), so an undeclared call to it goes through the side-car."""
    server = ThreadingHTTPServer((OUTSIDE_HOST, 0), Outside)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def write_mesh(folder: Path, outside_port: int, outbound_mode: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    relay = "[python, -m, uvicorn, relay_app:app, --host, 127.0.0.1, --port, $(PORT), --no-access-log]"
    (folder / "mesh.yaml").write_text(
        f"""apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: {{ name: boundary }}
spec:
  trustDomain: fec.gov.local
  defaultPolicy: FEC-F101
  allowedHeaders: [x-correlation-id]
  outboundTrafficPolicy: {{ mode: {outbound_mode} }}
---
apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata: {{ name: public }}
spec:
  routes: [{{ pathPrefix: /front, service: front }}]
---
apiVersion: mesh.codifyhq.io/v1
kind: ExternalService
metadata: {{ name: fec-api }}
spec: {{ address: {OUTSIDE_HOST}, allowLoopback: true, port: {outside_port} }}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{ name: front }}
spec:
  port: 8080
  calls: [back, fec-api]
  run: {{ workingDir: {APPS}, command: {relay} }}
  readinessProbe: {{ httpGet: {{ path: /healthz }} }}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{ name: back }}
spec:
  port: 8080
  run: {{ workingDir: {APPS}, command: {relay} }}
  readinessProbe: {{ httpGet: {{ path: /healthz }} }}
"""
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, outside: int) -> Iterator[tuple[MeshRun, Path]]:
    root = tmp_path_factory.mktemp("boundary")
    write_mesh(root / "mesh", outside, "REGISTRY_ONLY")
    with running_mesh(root / "mesh", root / "run") as run:
        yield run, root


def app_port(run: MeshRun, service: str) -> int:
    return int(run.status()["services"][service]["replicas"][0]["app"]["port"])


def seen_by(run: MeshRun, service: str) -> list[list[list[str]]]:
    response = httpx.get(f"http://127.0.0.1:{app_port(run, service)}/seen", timeout=5, trust_env=False)
    return list(response.json())


def names(headers: list[list[str]]) -> set[str]:
    return {name for name, _ in headers}


def stripped(run: MeshRun) -> dict[tuple[str, str], int]:
    return {(s["header"], s["side"]): s["count"] for s in run.status()["boundary"]["headers_stripped"]}


def test_a_header_off_the_list_never_reaches_any_app_and_is_counted_by_name(mesh: tuple[MeshRun, Path]) -> None:
    run, _ = mesh
    before_front, before_back = len(seen_by(run, "front")), len(seen_by(run, "back"))
    response = httpx.get(
        run.ingress + "/front/relay",
        params={"to": "http://back:8080/back"},
        headers={
            "x-ssn": SECRET,  # not on the list
            "x-correlation-id": "c-1",  # on the list
            "x-policy-ctx": "FEC-F101",  # the mesh's own header
            "x-envoy-upstream-rq-timeout-ms": "1",  # would steer the ingress's Envoy
            "x-forwarded-client-cert": "URI=spiffe://fec.gov.local/ns/default/sa/admin",
        },
        timeout=10,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == 200  # front -> back worked (the 1 ms timeout was not obeyed)
    front, back = seen_by(run, "front")[before_front:], seen_by(run, "back")[before_back:]
    assert len(front) == 1 and len(back) == 1
    for headers in (front[0], back[0]):
        assert "x-ssn" not in names(headers) and all(SECRET not in v for _, v in headers)
        assert ["x-correlation-id", "c-1"] in headers and ["x-policy-ctx", "FEC-F101"] in headers
        assert "x-envoy-upstream-rq-timeout-ms" not in names(headers)
        forged = [v for k, v in headers if k == "x-forwarded-client-cert"]
        assert all("sa/admin" not in v for v in forged)  # back sees front's real identity only
    wait_for(lambda: stripped(run).get(("x-ssn", "in"), 0) == 1, timeout=5, what="the strip to be counted")
    # Envoy itself removes x-envoy-* and XFCC from requests of clients it does not trust (every
    # client of the ingress), before the allow-list sees them: gone, as asserted above, uncounted.
    assert set(stripped(run)) == {("x-ssn", "in")}
    coverage = run.status()["boundary"]["policy_coverage"]
    assert coverage["back"]["requests"] >= 1 and coverage["back"]["with_policy"] == coverage["back"]["requests"]
    metrics = run.api("GET", "/metrics").text
    assert 'interstate_boundary_headers_stripped_total{header="x-ssn",side="in"} 1.0' in metrics
    assert SECRET not in metrics and SECRET not in json.dumps(run.status())
    assert all(SECRET not in p.read_text(errors="replace") for p in (run.run_dir / "logs").glob("*.log"))


def test_a_header_cannot_hide_from_the_count_behind_many_others(mesh: tuple[MeshRun, Path]) -> None:
    run, _ = mesh
    junk = {f"x-junk-{i}": "1" for i in range(40)}
    response = httpx.get(
        run.ingress + "/front/relay", headers={**junk, "x-hidden": SECRET}, timeout=10, trust_env=False
    )
    assert response.status_code == 200, response.text

    def counted() -> dict[tuple[str, str], int]:
        counts = stripped(run)
        return counts if ("x-hidden", "in") in counts and ("x-junk-39", "in") in counts else {}

    counts = wait_for(counted, timeout=5, what="every stripped name to be counted")
    assert all(counts[(f"x-junk-{i}", "in")] == 1 for i in range(40))


def test_only_allowed_headers_leave_the_mesh_for_an_external_service(mesh: tuple[MeshRun, Path]) -> None:
    run, _ = mesh
    Outside.seen.clear()
    response = httpx.get(
        run.ingress + "/front/relay",
        params={"to": "http://fec-api/filings"},
        headers={"x-correlation-id": "c-2"},
        timeout=10,
        trust_env=False,
    )
    assert response.status_code == 200 and response.json()["status"] == 200
    [headers] = Outside.seen
    assert headers.get("x-correlation-id") == "c-2" and headers.get("x-policy-ctx") == "FEC-F101"
    assert "x-internal-note" not in headers  # front's own header, not on the list
    assert "x-forwarded-client-cert" not in headers
    # exactly: HTTP's own, the list's, the mesh's policy header, and what Envoy itself sets
    assert set(headers) <= {
        "host", "accept", "accept-encoding", "user-agent", "connection", "content-length",
        "x-correlation-id", "x-policy-ctx", "x-request-id", "x-forwarded-proto",
    }, headers  # fmt: skip
    wait_for(lambda: stripped(run).get(("x-internal-note", "out"), 0) >= 1, timeout=5, what="the egress strip count")


def test_undeclared_hosts_are_refused_and_counted_then_passed_through_with_allow_any(
    mesh: tuple[MeshRun, Path], outside: int
) -> None:
    run, root = mesh
    Outside.seen.clear()
    undeclared = f"http://{OUTSIDE_HOST}:{outside}/anything"

    def call() -> dict[str, object]:
        response = httpx.get(run.ingress + "/front/relay", params={"to": undeclared}, timeout=10, trust_env=False)
        assert response.status_code == 200
        return dict(response.json())

    refused = call()
    assert refused["status"] == 404 and "front may only call the services in its spec.calls" in str(refused["body"])
    assert Outside.seen == []  # never contacted

    def undeclared_counts() -> dict[str, int]:
        calls = run.status()["boundary"]["undeclared_hosts"]
        return {c["outcome"]: c["count"] for c in calls if c["host"] == f"{OUTSIDE_HOST}:{outside}"}

    wait_for(lambda: undeclared_counts().get("refused") == 1, timeout=5, what="the refusal to be counted")

    # switch the running mesh to ALLOW_ANY: a host outside goes through (allow-list still applies)
    write_mesh(root / "mesh", outside, "ALLOW_ANY")
    applied = cli("apply", str(root / "mesh"), "--admin", run.admin)
    assert applied.returncode == 0, applied.stderr
    with other_host() as elsewhere:
        echo = elsewhere.echo_server()
        response = httpx.get(
            run.ingress + "/front/relay", params={"to": echo + "/filings"}, timeout=10, trust_env=False
        ).json()
        assert response["status"] == 200, response
        headers = json.loads(response["body"]) if isinstance(response["body"], str) else response["body"]
        assert headers["host"] == echo.removeprefix("http://") and "x-internal-note" not in headers
    # ... but never this host's own addresses (issue 25): 127.0.0.2 is one, however it is written
    guarded = httpx.get(run.ingress + "/front/relay", params={"to": undeclared}, timeout=10, trust_env=False).json()
    assert guarded["status"] == 403 and "forwards nothing to this host's own addresses" in guarded["body"], guarded
    outbound = run.status()["services"]["front"]["replicas"][0]["sidecar"]["outbound"]
    with httpx.Client(proxy=f"http://127.0.0.1:{outbound}", timeout=10, trust_env=False) as side_car:
        for spelling in ("localhost", "0x7f000002", "2130706434", "127.2", "127.0.0.1"):
            answer = side_car.get(f"http://{spelling}:{outside}/anything")
            # refused at the address it resolves to, or not even a name Envoy's resolver reads
            refused = answer.status_code == 403 and "this host's own addresses" in answer.text
            assert refused or "DNS resolution failure" in answer.text, (spelling, answer.text)
        # nor the host's own network addresses (its interfaces as the mesh read them at start)
        for address in host_addresses():
            if ":" in address:  # IPv6: passthrough resolves IPv4 only, and Envoy refuses the literal (400)
                answer = side_car.get(f"http://[{address}]:{outside}/anything")
                assert answer.status_code in (400, 403), (address, answer.text)
                continue
            answer = side_car.get(f"http://{address}:{outside}/anything")
            assert answer.status_code == 403 and "this host's own addresses" in answer.text, (address, answer.text)
    assert Outside.seen == []  # never contacted
    wait_for(lambda: undeclared_counts().get("refused") == 2, timeout=5, what="the guarded call to be counted refused")


def test_logs_rotate_under_traffic_and_counts_stay_exact(tmp_path: Path) -> None:
    """Issue 11: logs grew without bound (58 MB in 5 minutes at 100 requests/s). With a 16 KiB
    limit, the Envoys' access logs rotate several times while requests flow: at most 2 old files
    are kept, every request is still counted exactly once at the services' side-cars, and status
    says how much the logs take."""
    folder = tmp_path / "mesh"
    shutil.copytree(ROOT / "examples" / "election-night", folder)
    (folder / "results-autoscale.yaml").unlink()  # a fixed set of replicas: one of each
    with running_mesh(folder, tmp_path / "run", "--log-max-mb", "0.016", "--log-keep", "2") as run:
        logs = run.run_dir / "logs"
        sent = 0
        with httpx.Client(timeout=10, trust_env=False) as client:
            for _ in range(3):  # three rounds, each waiting for a rotation (checked every 5 s)
                before = run.status()["logs"]["rotations"]
                for _ in range(120):
                    assert client.get(run.ingress + "/results").status_code == 200
                    sent += 1
                wait_for(
                    lambda before=before: run.status()["logs"]["rotations"] > before, timeout=20, what="a rotation"
                )
        coverage = wait_for(
            lambda: (c := run.status()["boundary"]["policy_coverage"]).get("results", {}).get("requests") == sent and c,
            timeout=10,
            what=f"all {sent} requests counted at results' side-car",
        )
        assert coverage["results"] == {"requests": sent, "with_policy": sent}
        assert coverage["stats"]["requests"] == sent  # each /results calls stats once
        ingress_logs = sorted(p.name for p in logs.glob("ingress-ingress.envoy.log*"))
        assert ingress_logs[:2] == ["ingress-ingress.envoy.log", "ingress-ingress.envoy.log.1"], ingress_logs
        assert not list(logs.glob("*.log.3")), sorted(p.name for p in logs.iterdir())  # 2 kept, no more
        use = run.status()["logs"]
        assert use["rotations"] >= 3 and use["bytes"] <= use["limit_bytes"], use
        shown = cli("status", "--admin", run.admin)
        assert "logs: " in shown.stdout and "rotations" in shown.stdout, shown.stdout
