"""The header allow-list at the ingress, measured: what the Lua filter costs per request.

Three real Envoys on 127.0.0.1: two ingress Envoys compiled by interstate from the same small
mesh (Gateway `/results -> results`), configured over ADS by an in-process AdsServer, differing
only in `Mesh.spec.allowedHeaders`; and, as the `results` upstream, a third Envoy with a static
`direct_response`, so the upstream is never the bottleneck. Configurations:

    (a)  allowedHeaders ["*"]: no Lua filter (the baseline); requests carry only allowed headers
    (a') same Envoy as (a); requests also carry the 3 extra headers, passed through (a control:
         what the 3 headers cost without the filter)
    (b)  the default allow-list (Lua filter on); requests carry only allowed headers
    (c)  the default allow-list; requests also carry 3 headers the filter strips (and records)

A small asyncio HTTP/1.1 client keeps `--connections` keep-alive connections busy for
`--requests` requests per configuration and round; rounds alternate the configurations
(a, a', b, c, a, a', b, c, ...) so drift cancels out. Per configuration it reports the
requests/s and p50/p99 latency the client saw, and the CPU time the ingress Envoy process spent
per request (summed over its threads from /proc/PID/task/*/schedstat, in ns; psutil's
cpu_times elsewhere). It also prints how much CPU each process used and so what bounded the
run: on 2 cores the client uses about 0.2 of a core and the ingress Envoy about 0.5, so
requests/s and latency are set by round trips across 3 processes and by whatever else runs on
the machine. The ingress Envoy's CPU µs per request, and its ratio to (a) (the median of the
per-round ratios), are the robust numbers to read. At the end the ingress access log is checked:
every (c) request, and no other, recorded the 3 stripped names.

    .venv/bin/python bench/bench_boundary.py [--requests 5000] [--rounds 8] [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx
import psutil

from interstate.compile import Proxy, bootstrap, compile_proxy
from interstate.config.loader import decode_sources
from interstate.model.index import Endpoint, MeshIndex
from interstate.standalone.envoy import envoy_command, find_envoy
from interstate.xds.cache import SnapshotCache
from interstate.xds.server import AdsServer
from interstate.xds.snapshot import Snapshot

MESH = """
apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: {name: bench}
spec: {defaultPolicy: FEC-F101%(allowed)s}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: results}
spec: {port: 8080, run: {command: [x]}}
---
apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata: {name: gateway}
spec: {routes: [{pathPrefix: /results, service: results}]}
"""

ALLOWED = (
    b"GET /results HTTP/1.1\r\nHost: results.example\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: application/json\r\nAccept-Encoding: gzip\r\nx-policy-ctx: FEC-F101\r\n"
)
STRIPPED = ("cookie", "x-debug-user", "x-tracking-id")
EXTRA = b"Cookie: session=3f9a1c\r\nX-Debug-User: alice\r\nX-Tracking-Id: 7d1e-42\r\n"
BODY = '{"results": "ok"}'
WARM_UP = 500
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


@dataclass
class Config:
    label: str
    what: str
    allow_list: bool  # which ingress Envoy: the one with the Lua filter, or the `*` one
    request: bytes
    wall: float = 0.0
    cpu: float = 0.0
    requests: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu_per_round: list[float] = field(default_factory=list)
    rate_per_round: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upstream_config(port: int, admin: int) -> dict[str, object]:
    """A static Envoy that answers every request itself: the fastest upstream we can have."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": BODY}}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": address,
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
                            ]
                        }
                    ],
                }
            ]
        },
    }


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all threads: ns-precise from schedstat where Linux has it."""
    try:
        return sum(int(p.read_text().split()[0]) for p in Path(f"/proc/{pid}/task").glob("*/schedstat")) / 1e9
    except (OSError, ValueError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; just enough parsing for
    Envoy's replies (always content-length)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        match = CONTENT_LENGTH.search(head)
        if match is None:
            raise RuntimeError(f"reply without content-length: {head!r}")
        length = int(match.group(1))
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    async def get(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def drive(connections: list[Connection], request: bytes, total: int, latencies: list[float] | None) -> None:
    """`total` requests over every connection at once, each connection one request at a time."""

    async def one(conn: Connection, n: int) -> None:
        for _ in range(n):
            start = time.perf_counter()
            status = await conn.get(request)
            if status != 200:
                raise RuntimeError(f"expected 200 through the ingress, got {status}")
            if latencies is not None:
                latencies.append(time.perf_counter() - start)

    share, rest = divmod(total, len(connections))
    await asyncio.gather(*(one(c, share + (i < rest)) for i, c in enumerate(connections)))


async def wait_ready(admin_ports: list[int]) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        for port in admin_ports:
            for _ in range(200):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"Envoy with admin port {port} never became ready")


async def wait_routed(port: int) -> None:
    """Until the ingress routes /results (listeners, routes and endpoints all ACKed)."""
    async with httpx.AsyncClient(trust_env=False) as http:
        for _ in range(200):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/results")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the ingress on port {port} never routed /results")


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def run(requests: int, rounds: int, n_connections: int) -> int:
    configs = [
        Config("(a)", 'allowedHeaders ["*"], allowed headers only', False, ALLOWED + b"\r\n"),
        Config("(a')", 'allowedHeaders ["*"], +3 extra headers', False, ALLOWED + EXTRA + b"\r\n"),
        Config("(b)", "default allow-list, allowed headers only", True, ALLOWED + b"\r\n"),
        Config("(c)", "default allow-list, +3 headers stripped", True, ALLOWED + EXTRA + b"\r\n"),
    ]
    folder = Path(tempfile.mkdtemp(prefix="bench-boundary-"))
    binary = find_envoy()
    processes: list[asyncio.subprocess.Process] = []
    logs: list[BinaryIO] = []
    admins: list[int] = []
    server: AdsServer | None = None
    transports: list[asyncio.Transport] = []
    try:
        upstream_port, upstream_admin = free_port(), free_port()
        (folder / "upstream.json").write_text(json.dumps(upstream_config(upstream_port, upstream_admin)))
        cache = SnapshotCache()
        server = AdsServer(cache)
        xds_port = await server.start()
        ingresses: dict[bool, Proxy] = {}  # allow-list on? -> its ingress
        pids: dict[bool, int] = {}
        for allow_list in (False, True):
            name = "allow-list" if allow_list else "all"
            allowed = "" if allow_list else ', allowedHeaders: ["*"]'
            index = MeshIndex(
                decode_sources({"mesh.yaml": MESH % {"allowed": allowed}}),
                {"results": (Endpoint("results", 0, "127.0.0.1", upstream_port),)},
            )
            assert (index.boundary_headers is not None) is allow_list
            proxy = Proxy.ingress(free_port(), name=name)
            cache.set(proxy.node_id, Snapshot.from_resources(compile_proxy(index, proxy)))
            ingresses[allow_list] = proxy
            admins.append(free_port())
            path = folder / f"ingress-{name}.json"
            path.write_text(json.dumps(bootstrap.build(proxy.node_id, "", admins[-1], "127.0.0.1", xds_port)))
            # Envoy's stdout is its access log: a file, as in standalone mode, checked at the end
            logs.append((folder / f"ingress-{name}.log").open("wb"))
            processes.append(
                await asyncio.create_subprocess_exec(
                    *envoy_command(binary, path), stdout=logs[-1], stderr=subprocess.DEVNULL
                )
            )
            pids[allow_list] = processes[-1].pid
        processes.append(
            await asyncio.create_subprocess_exec(
                *envoy_command(binary, folder / "upstream.json"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        upstream_pid = processes[-1].pid
        await wait_ready([upstream_admin, *admins])
        for proxy in ingresses.values():
            await wait_routed(proxy.ingress_port)

        loop = asyncio.get_running_loop()
        connections: dict[str, list[Connection]] = {}
        for config in configs:
            connections[config.label] = []
            for _ in range(n_connections):
                port = ingresses[config.allow_list].ingress_port
                transport, conn = await loop.create_connection(Connection, "127.0.0.1", port)
                transports.append(transport)
                connections[config.label].append(conn)
            await drive(connections[config.label], config.request, WARM_UP, None)

        me = os.getpid()
        client_cpu = upstream_cpu = envoy_cpu = busy_wall = machine_busy = 0.0
        for _ in range(rounds):
            for config in configs:
                pid = pids[config.allow_list]
                latencies: list[float] = []
                machine0 = psutil.cpu_times()
                cpu0, up0, me0 = cpu_seconds(pid), cpu_seconds(upstream_pid), cpu_seconds(me)
                start = time.perf_counter()
                await drive(connections[config.label], config.request, requests, latencies)
                wall = time.perf_counter() - start
                cpu = cpu_seconds(pid) - cpu0
                upstream_cpu += cpu_seconds(upstream_pid) - up0
                client_cpu += cpu_seconds(me) - me0
                machine1 = psutil.cpu_times()
                machine_busy += (machine1.user + machine1.system) - (machine0.user + machine0.system)
                envoy_cpu += cpu
                busy_wall += wall
                config.wall += wall
                config.cpu += cpu
                config.requests += requests
                config.latencies += latencies
                config.cpu_per_round.append(cpu / requests)
                config.rate_per_round.append(requests / wall)
        await asyncio.sleep(1.2)  # Envoy flushes access logs every second (--file-flush-interval-msec)
        stripped_lines, other_lines = check_log(folder / "ingress-allow-list.log")
    finally:
        for transport in transports:
            transport.close()
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        for log in logs:
            log.close()
        if server is not None:
            await server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    report(configs, n_connections)
    shares = {
        "ingress Envoy": envoy_cpu / busy_wall,
        "upstream Envoy": upstream_cpu / busy_wall,
        "Python client": client_cpu / busy_wall,
    }
    others = machine_busy / busy_wall - sum(shares.values())
    cores = psutil.cpu_count() or 1
    print(
        "\nCPU while measuring, in cores: "
        + ", ".join(f"{name} {share:.2f}" for name, share in shares.items())
        + f", everything else on the machine {max(others, 0.0):.2f} (of {cores})"
    )
    if shares["Python client"] > 0.85:
        print("the Python client is the bottleneck: req/s and latency are the client's; read the CPU µs/request")
    elif shares["ingress Envoy"] > 0.85:
        print("the ingress Envoy (one worker thread) is the bottleneck: req/s ratios mirror its CPU cost")
    elif machine_busy / busy_wall > 0.9 * cores:
        print("the cores are saturated: req/s and latency depend on the machine's load; read the CPU µs/request")
    else:
        print(
            "no process saturates a core: req/s is bounded by round trips across 3 processes; read the CPU µs/request"
        )
    c = next(c for c in configs if c.label == "(c)")
    expected = c.requests + WARM_UP
    print(
        f"access log of the allow-list ingress: {stripped_lines} requests recorded {','.join(STRIPPED)} stripped "
        f"(expected {expected}: every (c) request), {other_lines} recorded anything else (expected 0)"
    )
    return 0 if stripped_lines == expected and other_lines == 0 else 1


def check_log(path: Path) -> tuple[int, int]:
    """Requests whose access-log line records exactly the 3 stripped names; lines recording others."""
    expected, other = set(STRIPPED), 0
    stripped = 0
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = entry.get("stripped")
        if value in (None, "", "-"):
            continue
        if set(str(value).split(",")) == expected:
            stripped += 1
        else:
            other += 1
    return stripped, other


def report(configs: list[Config], n_connections: int) -> None:
    """Per configuration: pooled numbers, and the ratios to (a); the CPU ratio is the median of
    the per-round ratios (each against the (a) of the same round), with their range."""
    base = configs[0]
    base_sorted = sorted(base.latencies)
    b50, b99 = percentile(base_sorted, 0.5), percentile(base_sorted, 0.99)
    rounds = len(base.cpu_per_round)
    print(
        f"{base.requests // rounds} requests per configuration and round, {rounds} rounds, "
        f"{n_connections} keep-alive connections, all on 127.0.0.1\n"
    )
    print(
        f"{'':5} {'configuration':43} {'req/s':>6} {'CPU µs/req':>10} {'p50 ms':>6} {'p99 ms':>6} │"
        f" {'CPU/(a) [rounds]':>20} {'req/s':>6} {'p50':>6} {'p99':>6}"
    )
    for config in configs:
        ordered = sorted(config.latencies)
        p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
        per_round = [x / y for x, y in zip(config.cpu_per_round, base.cpu_per_round, strict=True)]
        rates = [x / y for x, y in zip(config.rate_per_round, base.rate_per_round, strict=True)]
        cpu_ratio = f"{statistics.median(per_round):.2f}x [{min(per_round):.2f}-{max(per_round):.2f}]"
        print(
            f"{config.label:5} {config.what:43} {config.requests / config.wall:6.0f}"
            f" {config.cpu / config.requests * 1e6:10.1f} {p50 * 1e3:6.3f} {p99 * 1e3:6.3f} │"
            f" {cpu_ratio:>20} {statistics.median(rates):5.2f}x {p50 / b50:5.2f}x {p99 / b99:5.2f}x"
        )
    a, a2, b, c = (config.cpu / config.requests for config in configs)
    print(
        f"\nthe Lua filter, Envoy CPU per request: +{(b - a) * 1e6:.1f} µs with nothing to strip ((b)-(a)), "
        f"+{(c - a2) * 1e6:.1f} µs stripping 3 headers ((c)-(a'): the same bytes on the wire, {c / a2:.2f}x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    return asyncio.run(run(args.requests, args.rounds, args.connections))


if __name__ == "__main__":
    raise SystemExit(main())
