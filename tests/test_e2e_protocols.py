"""End to end, issue 12: what services speak reaches them through the mesh.

Real `interstate up`, real Envoys and apps on 127.0.0.1. Starts with the mesh that names no
policy ID at all (the `Mesh` document is optional), which did not start: Envoy refused the
ingress's guard regex `(?!)`, and the error said "the previous one is in force" though there
was none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket
from mesh_runner import EXAMPLE, ROOT, MeshRun, envoy_stats, running_mesh, wait_for

pytestmark = pytest.mark.e2e


def test_a_mesh_that_names_no_policy_id_starts_and_adds_no_policy_header(tmp_path: Path) -> None:
    plain = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, plain)
    gateway = (plain / "mesh.yaml").read_text().split("---\n", 1)[1]  # keep the Gateway only
    (plain / "mesh.yaml").write_text(gateway)
    for name in ("results.yaml", "stats.yaml"):
        text = (plain / name).read_text()
        (plain / name).write_text("\n".join(line for line in text.splitlines() if "/policy:" not in line) + "\n")
    with running_mesh(plain, tmp_path / "run") as mesh:
        answer = httpx.get(mesh.ingress + "/results", trust_env=False, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["stats"]["policy_ctx_seen"] is None
        # a client's own header is an ordinary header here: passed on, not judged
        sent = httpx.get(mesh.ingress + "/results", headers={"x-policy-ctx": "ANY-1"}, trust_env=False, timeout=10)
        assert sent.status_code == 200 and sent.json()["stats"]["policy_ctx_seen"] == "ANY-1"


# ---- streams and timeouts: a stream app behind the ingress and another workload ------------

APPS = ROOT / "tests" / "apps"
STREAM_APP = "[python, -m, uvicorn, stream_app:app, --host, 127.0.0.1, --port, $(PORT), --no-access-log]"


def stream_workload(name: str, calls: str = "[]") -> str:
    return f"""apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{ name: {name} }}
spec:
  port: 8080
  calls: {calls}
  run: {{ workingDir: {APPS}, command: {STREAM_APP} }}
  readinessProbe: {{ httpGet: {{ path: /healthz }} }}
"""


def timeout_policy(service: str, timeout: str) -> str:
    return f"""apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: {{ name: {service}-timeout }}
spec:
  destination: {{ service: {service} }}
  timeout: {timeout}
"""


def grpc_workload(name: str, protocol: str = "") -> str:
    """tests/apps/grpc_app.py as a workload; without `protocol` the mesh takes it for HTTP/1.1."""
    return f"""apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{ name: {name} }}
spec:
  port: 8080
{protocol}  run: {{ workingDir: {APPS}, command: [python, grpc_app.py, $(PORT)] }}
"""


STREAMS_MESH = "---\n".join(
    [
        """apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: { name: streams }
spec: { trustDomain: streams.test, defaultPolicy: FEC-F101 }
""",
        """apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata: { name: public }
spec:
  routes: [{ pathPrefix: /s, service: streams }, { pathPrefix: /test.Streams, service: ticker }]
""",
        stream_workload("streams"),
        stream_workload("tight"),
        stream_workload("client", "[streams, tight, ticker, broken]"),
        timeout_policy("streams", "30s"),
        timeout_policy("tight", "5s"),
        # an HTTP/1.1 app as far as the mesh knows (no spec.protocol): its gRPC calls are told
        # by their content-type and go to it over h2c
        grpc_workload("ticker"),
        grpc_workload("broken", "  protocol: grpc\n"),
        """apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: { name: broken-breaker }
spec:
  destination: { service: broken }
  outlierDetection: { consecutiveErrors: 3, baseEjectionTime: 60s }
""",
        """apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: { name: ticker-retries }
spec:
  destination: { service: ticker }
  retries: { attempts: 2, perTryTimeout: 2s, retryOn: [connect-failure, unavailable] }
""",
    ]
)


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshRun]:
    root = tmp_path_factory.mktemp("streams")
    (root / "mesh").mkdir()
    (root / "mesh" / "mesh.yaml").write_text(STREAMS_MESH)
    with running_mesh(root / "mesh", root / "run") as run:
        yield run


def outbound_of(run: MeshRun, service: str) -> str:
    """The HTTP proxy the apps of `service` use: its first replica's side-car's outbound listener."""
    sidecar = run.status()["services"][service]["replicas"][0]["sidecar"]
    return f"http://127.0.0.1:{sidecar['outbound']}"


def read_events(url: str, proxy: str | None) -> list[tuple[float, str]]:
    """(seconds since the request, data) of each server-sent event."""
    started = time.monotonic()
    got = []
    with httpx.Client(proxy=proxy, trust_env=False, timeout=httpx.Timeout(10, read=30)) as http:
        with http.stream("GET", url, headers={"accept": "text/event-stream"}) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    got.append((time.monotonic() - started, line[6:]))
    return got


def test_a_60s_event_stream_and_a_60s_grpc_stream_arrive_whole_and_as_sent(streams: MeshRun) -> None:
    """From a workload (through two side-cars) and through the ingress, all at once: 61 events
    or gRPC messages, one a second. Before issue 12 the callee's side-car cut every stream at
    15 s (flag UT)."""
    client = outbound_of(streams, "client")
    with ThreadPoolExecutor(3) as pool:
        events = {
            "workload": pool.submit(read_events, "http://streams:8080/events?n=61&every=1", client),
            "ingress": pool.submit(read_events, streams.ingress + "/s/events?n=61&every=1", None),
        }
        grpc = pool.submit(grpc_call, "ticker:8080", "Ticks", "61", "1", proxy=client)
        results = {name: future.result(timeout=120) for name, future in events.items()}
        results["grpc"] = [(t, m.split("@")[0]) for t, m in grpc.result(timeout=120)["messages"]]
    for name, got in results.items():
        assert [data for _, data in got] == [str(i) for i in range(61)], name
        assert got[0][0] < 5, name  # the first arrived at once, not with the last
        assert got[-1][0] >= 59, name


def test_the_callers_timeout_is_the_calls_one_deadline(streams: MeshRun) -> None:
    """A 20 s answer with `timeout: 30s` arrives (the callee's side-car no longer cuts it at
    15 s); with `timeout: 5s` the caller's side-car cuts it at 5 s, and status says so."""
    proxy = outbound_of(streams, "client")

    def get(url: str) -> tuple[int, float]:
        started = time.monotonic()
        with httpx.Client(proxy=proxy, trust_env=False, timeout=60) as http:
            status = http.get(url).status_code
        return status, time.monotonic() - started

    with ThreadPoolExecutor(2) as pool:
        patient = pool.submit(get, "http://streams:8080/slow?s=20")
        hasty = pool.submit(get, "http://tight:8080/slow?s=20")
        (ok, ok_took), (cut, cut_took) = patient.result(timeout=90), hasty.result(timeout=90)
    assert (ok, cut) == (200, 504)
    assert ok_took >= 20 and 5 <= cut_took < 8
    failures = streams.status()["services"]["tight"]["resilience"]["recent_failures"]
    (timed_out,) = [f for f in failures if f["status"] == 504]
    assert timed_out["flags"] == "UT"
    assert timed_out["why"].startswith("timed out by the caller's side-car")


def echo(url: str, **options: Any) -> list[str]:
    """Open a WebSocket, send 100 messages, and return every message received."""
    socket = websocket.create_connection(url, timeout=10, **options)
    try:
        got = [socket.recv()]  # the policy header the app saw
        for i in range(100):
            socket.send(f"message {i}")
            got.append(socket.recv())
        return got
    finally:
        socket.close()


def test_a_websocket_echoes_100_messages_through_the_ingress_and_between_workloads(streams: MeshRun) -> None:
    expected = ["FEC-F101", *(f"message {i}" for i in range(100))]
    ingress = streams.ingress.replace("http://", "ws://")
    assert echo(ingress + "/s/ws") == expected
    # an app that sends its WebSocket to its side-car by Host header
    outbound = outbound_of(streams, "client")
    assert echo(outbound.replace("http://", "ws://") + "/ws", host="streams:8080") == expected
    # ... and one that tunnels it through HTTP_PROXY (CONNECT streams:8080)
    port = int(outbound.rsplit(":", 1)[1])
    tunnelled = echo("ws://streams:8080/ws", http_proxy_host="127.0.0.1", http_proxy_port=port, proxy_type="http")
    assert tunnelled == expected
    # the hop between the side-cars was HTTP/2: the upgrade crossed as extended CONNECT
    assert envoy_counter(streams, "streams", "http.inbound.downstream_cx_http2_total") > 0
    assert envoy_counter(streams, "streams", "http.inbound.downstream_cx_upgrades_total") >= 3


# ---- gRPC with grpcio's defaults ---------------------------------------------------------------


def grpc_call(target: str, kind: str, *args: str, proxy: str | None = None) -> dict[str, Any]:
    """Run grpc_app.py's client as a mesh app runs: `http_proxy` from the mesh (or none)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    if proxy:
        env.update(http_proxy=proxy, HTTP_PROXY=proxy, no_proxy="localhost,127.0.0.1")
    done = subprocess.run(
        [sys.executable, str(APPS / "grpc_app.py"), "call", target, kind, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def envoy_counter(run: MeshRun, service: str, name: str) -> int:
    admin = run.status()["services"][service]["replicas"][0]["sidecar"]["admin"]
    return envoy_stats(admin, f"^{re.escape(name)}$").get(name, 0)


@pytest.mark.parametrize("route", ["workload", "ingress"])
def test_grpc_unary_streaming_and_bidirectional_calls_with_default_client_settings(
    streams: MeshRun, route: str
) -> None:
    """From a workload: grpcio targets `ticker:8080` and, as `http_proxy` is set, sends
    `CONNECT ticker:8080` to its side-car, which ends the tunnel and routes the calls in it.
    Through the ingress: the client dials the ingress directly (h2c)."""
    target, proxy = (
        ("ticker:8080", outbound_of(streams, "client"))
        if route == "workload"
        else (
            streams.ingress.removeprefix("http://"),
            None,
        )
    )
    assert grpc_call(target, "Unary", proxy=proxy) == {"answer": "FEC-F101"}
    ticks = grpc_call(target, "Ticks", "100", "0.05", proxy=proxy)["messages"]
    assert [m for _, m in ticks] == [f"{i}@FEC-F101" for i in range(100)]
    assert ticks[0][0] < 1.5 < 4 < ticks[-1][0]  # as sent, 50 ms apart, not all at the end
    assert ticks[50][0] - ticks[0][0] > 2
    echoed = grpc_call(target, "Echo", "100", proxy=proxy)["messages"]
    assert [m for _, m in echoed] == [f"m{i}" for i in range(100)]
    # the client's deadline (grpc-timeout) reaches the app, and is the call's deadline
    left = float(grpc_call(target, "Deadline", "0", "0", "7", proxy=proxy)["answer"])
    assert 5 < left <= 7.1  # (grpcio rounds the header's value up a little)
    cut = grpc_call(target, "Ticks", "100", "0.05", "2", proxy=proxy)
    assert cut["code"] == "DEADLINE_EXCEEDED" and 1.9 < cut["after"] < 4, cut
    assert 20 < len(cut["messages"]) < 80  # the stream flowed until the deadline
    # retried on UNAVAILABLE (TrafficPolicy retryOn: unavailable), on another attempt
    assert grpc_call(target, "Flaky", proxy=proxy) == {"answer": "ok"}
    # ... and the failed attempt is counted by its gRPC status, though Envoy answered it 200
    counted = r'interstate_grpc_calls_total\{grpc_status="UNAVAILABLE",service="ticker"\} [1-9]'
    wait_for(
        lambda: re.search(counted, streams.api("GET", "/metrics").text), what="the UNAVAILABLE counted", timeout=15
    )
    # the hop into ticker's side-car was HTTP/2 over mutual TLS
    # (every caller of ticker is a proxy: none of them came over HTTP/1.1)
    assert envoy_counter(streams, "ticker", "http.inbound.downstream_cx_http2_total") > 0
    assert envoy_counter(streams, "ticker", "http.inbound.downstream_cx_http1_total") == 0
    assert envoy_counter(streams, "ticker", "http.inbound.downstream_cx_ssl_total") > 0


# ---- plain TCP: Redis on a local port, mutual TLS between the side-cars ------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_redis_through_the_mesh_answers_pong_over_mutual_tls(tmp_path: Path) -> None:
    """`redis-cli -p LOCAL PING` on the caller's side reaches the cache's replica through both
    side-cars: the caller's side-car listens on the port the workload gave the cache."""
    local = free_port()
    redis = '[redis-server, --port, $(PORT), --bind, 127.0.0.1, --save, "", --appendonly, "no"]'
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "mesh.yaml").write_text(
        "---\n".join(
            [
                """apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: { name: tcp }
spec: { trustDomain: tcp.test }
""",
                f"""apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{ name: cache }}
spec:
  port: 6380
  protocol: tcp
  run: {{ command: {redis} }}
""",
                stream_workload("client", "[cache]").replace(
                    "  calls: [cache]\n", f"  calls: [cache]\n  localPorts: {{ cache: {local} }}\n"
                ),
            ]
        )
    )
    with running_mesh(tmp_path / "mesh", tmp_path / "run") as mesh:

        def cli(*args: str) -> str:
            done = subprocess.run(["redis-cli", "-p", str(local), *args], capture_output=True, text=True, timeout=10)
            return done.stdout.strip()

        assert cli("PING") == "PONG"
        assert cli("SET", "precinct-12", "counted") == "OK"
        assert cli("GET", "precinct-12") == "counted"
        # the hop was mutual TLS, with each side's identity checked
        caller = envoy_counter(mesh, "client", "cluster.outbound|cache.ssl.versions.TLSv1.3")
        callee = envoy_counter(mesh, "cache", "tcp.inbound-tcp.downstream_cx_total")
        assert caller >= 3 and callee >= 3
        log = tmp_path / "run" / "logs" / "sidecar-cache-0.envoy.log"
        peer = '"peer":"spiffe://tcp.test/ns/default/sa/client"'
        wait_for(lambda: peer in log.read_text(), what="the callee's log naming the caller's identity")
        assert mesh.status()["services"]["cache"]["ready"] == 1


def test_a_replica_failing_grpc_calls_is_ejected_though_each_answer_was_http_200(streams: MeshRun) -> None:
    """Envoy's outlier detection reads `grpc-status` (UNAVAILABLE counts as a 503): after three
    failed calls the circuit opens and the fourth is answered at once by the caller's side-car,
    and status says who is ejected and shows the failures by their gRPC status."""
    client = outbound_of(streams, "client")
    for _ in range(3):
        assert grpc_call("broken:8080", "Broken", proxy=client) == {"code": "UNAVAILABLE", "details": "broken: always"}
    shed = grpc_call("broken:8080", "Broken", proxy=client)
    assert shed["code"] == "UNAVAILABLE" and "no healthy upstream" in shed["details"], shed
    resilience = streams.status()["services"]["broken"]["resilience"]
    assert len(resilience["ejected"]) == 1, resilience

    def failed_by_the_app() -> list[dict[str, Any]]:  # once Envoy has flushed its access log
        seen = streams.status()["services"]["broken"]["resilience"]["recent_failures"]
        return [f for f in seen if (f["grpc"], f["flags"], f["count"]) == ("UNAVAILABLE", "-", 3)]

    (failed,) = wait_for(failed_by_the_app, what="the 3 failed gRPC calls in status")
    assert failed["status"] == 200 and failed["why"].startswith("the gRPC call failed with UNAVAILABLE")
