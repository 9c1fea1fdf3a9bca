"""Fast fail, measured: the latency of a 503 while the circuit is open, against a normal call.

One real Envoy side-car (compiled by interstate, configured over ADS) in front of an upstream
on 127.0.0.1 whose answers we switch from 200 to 500. The TrafficPolicy ejects after 3
consecutive errors; while every replica is ejected Envoy answers 503 itself (flag UH). Both
latencies are measured in the same run with the same keep-alive client, so the ratio means
something on any machine.

    .venv/bin/python bench/bench_fastfail.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from interstate.compile import Proxy, bootstrap, compile_proxy
from interstate.config.loader import decode_sources
from interstate.model.index import Endpoint, MeshIndex
from interstate.standalone.envoy import envoy_command, find_envoy
from interstate.xds.cache import SnapshotCache
from interstate.xds.server import AdsServer
from interstate.xds.snapshot import Snapshot

MESH = """
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: results}
spec: {port: 8080, run: {command: [x]}, calls: [stats]}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: stats}
spec: {port: 8080, run: {command: [x]}}
---
apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: {name: stats-breaker}
spec:
  destination: {service: stats}
  outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 60s}
  retries: {attempts: 0}
"""


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # headers and body in one write: no Nagle/delayed-ACK stall
    disable_nagle_algorithm = True
    failing = False

    def do_GET(self) -> None:
        body = b"fail" if Upstream.failing else b'{"ok": true}'
        self.send_response(500 if Upstream.failing else 200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


WARM_UP = 100


class KeepAlive:
    """A minimal HTTP/1.1 client on one connection: little enough overhead to see Envoy's."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def get(self) -> tuple[int, float]:
        start = time.perf_counter()
        self.sock.sendall(b"GET http://stats:8080/x HTTP/1.1\r\nHost: stats:8080\r\n\r\n")
        status = int(self.file.readline().split()[1])
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        self.file.read(length)
        return status, time.perf_counter() - start


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99) - 1] * 1e3


async def run(requests: int) -> int:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    proxy = Proxy.sidecar("results", 0, inbound_port=free_port(), outbound_port=free_port(), app_port=free_port())
    index = MeshIndex(
        decode_sources({"mesh.yaml": MESH}), {"stats": (Endpoint("stats", 0, "127.0.0.1", upstream.server_address[1]),)}
    )
    cache = SnapshotCache()
    cache.set(proxy.node_id, Snapshot.from_resources(compile_proxy(index, proxy)))
    server = AdsServer(cache)
    xds_port = await server.start()
    folder = Path(tempfile.mkdtemp(prefix="bench-fastfail-"))
    admin = free_port()
    (folder / "envoy.json").write_text(
        json.dumps(bootstrap.build(proxy.node_id, "results", admin, "127.0.0.1", xds_port))
    )
    envoy = await asyncio.create_subprocess_exec(
        *envoy_command(find_envoy(), folder / "envoy.json"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            for _ in range(200):
                try:
                    if (await http.get(f"http://127.0.0.1:{admin}/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        client = KeepAlive(proxy.outbound_port)
        for _ in range(WARM_UP):
            client.get()
        normal = []
        for _ in range(requests):
            status, took = client.get()
            assert status == 200, status
            normal.append(took)
        Upstream.failing = True
        failed_through = 0
        while (status := client.get()[0]) == 500:
            failed_through += 1
        fast = []
        for _ in range(requests):
            status, took = client.get()
            assert status == 503, status
            fast.append(took)
        async with httpx.AsyncClient(trust_env=False) as http:
            stats = (
                await http.get(
                    f"http://127.0.0.1:{admin}/stats", params={"filter": r"outbound\|stats\.upstream_rq_total$"}
                )
            ).text.strip()
    finally:
        envoy.terminate()
        await asyncio.wait_for(envoy.wait(), 10)
        upstream.shutdown()
        await server.stop()
    n50, n99 = summary(normal)
    f50, f99 = summary(fast)
    print(f"normal call through the side-car:  p50 {n50:.3f} ms  p99 {n99:.3f} ms  ({requests} requests)")
    print(f"503 with the circuit open:         p50 {f50:.3f} ms  p99 {f99:.3f} ms  ({requests} requests)")
    print(f"ratio fast-fail/normal: p50 {f50 / n50:.2f}x  p99 {f99 / n99:.2f}x")
    print(f"calls that failed through before the circuit opened: {failed_through} (consecutiveErrors 3)")
    print(
        f"upstream attempts in total: {stats} (= {WARM_UP} warm-up + {requests} normal + {failed_through} failing;"
        " none while the circuit is open)"
    )
    return 0 if f99 < 1.0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    return asyncio.run(run(parser.parse_args().requests))


if __name__ == "__main__":
    raise SystemExit(main())
