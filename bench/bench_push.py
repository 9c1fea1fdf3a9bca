"""How long one push takes as the mesh grows: a full compile, and the incremental push.

A generated mesh of N services (each with one replica and calling 3 others, all endpoints on
loopback addresses 127.0.x.y) is compiled from scratch: one MeshIndex, then `compile_proxy` +
`Snapshot.from_resources` for every side-car. Reported per N, with the cost per proxy, and as a
ratio to the smallest mesh measured in the same run: a flat ratio means the work per proxy does
not grow with the mesh.

Then the supervisor's own path, `xds.incremental.SnapshotBuilder`: its first build (everything
compiled), and a push after one service's endpoints changed (a replica became ready), which is
what most pushes of a running mesh are (autoscaling, restarts). The ratio full / incremental is
measured in the same run.

    .venv/bin/python bench/bench_push.py [--sizes 100,300,1000]
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from interstate.ca.authority import Authority, utcnow
from interstate.compile import Credentials, Proxy, compile_proxy
from interstate.config.loader import decode_sources
from interstate.model.index import Endpoint, MeshIndex
from interstate.xds.incremental import SnapshotBuilder
from interstate.xds.snapshot import Snapshot

CALLS = 3


FILE_SERVICES = 100  # services per file: a file holds at most 1,000 documents (config.limits)


def mesh_files(n: int) -> dict[str, str]:
    """The mesh as a folder of files would hold it: the Mesh, then FILE_SERVICES services a file."""
    files = {
        "mesh.yaml": "apiVersion: mesh.codifyhq.io/v1\nkind: Mesh\nmetadata: {name: bench}\nspec: {defaultPolicy: FEC-F101}\n"
    }
    for first in range(0, n, FILE_SERVICES):
        files[f"services-{first // FILE_SERVICES:03d}.yaml"] = services_yaml(
            n, range(first, min(n, first + FILE_SERVICES))
        )
    return files


def services_yaml(n: int, numbers: range) -> str:
    docs = []
    for i in numbers:
        calls = ", ".join(f"svc-{(i + k) % n}" for k in range(1, CALLS + 1))
        docs.append(
            "apiVersion: mesh.codifyhq.io/v1\nkind: Workload\n"
            f"metadata: {{name: svc-{i}}}\nspec: {{port: 8080, run: {{command: [python, a.py]}}, calls: [{calls}]}}\n"
        )
        if i % 10 == 0:
            docs.append(
                "apiVersion: mesh.codifyhq.io/v1\nkind: TrafficPolicy\n"
                f"metadata: {{name: p-{i}}}\nspec: {{destination: {{service: svc-{i}}}, "
                "outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 30s}}\n"
            )
    return "---\n".join(docs)


def endpoint(i: int, replica: int = 0) -> Endpoint:
    return Endpoint(f"svc-{i}", replica, f"127.0.{i // 250}.{i % 250 + 1}", 15006 + replica)


def push(n: int, credentials: Credentials) -> tuple[float, float, float, float, float]:
    start = time.perf_counter()
    config = decode_sources(mesh_files(n))
    loaded = time.perf_counter() - start
    endpoints = {f"svc-{i}": (endpoint(i),) for i in range(n)}
    index = MeshIndex(config).with_endpoints(endpoints)
    proxies = [Proxy.sidecar(f"svc-{i}", 0, inbound_port=15006, outbound_port=15001, app_port=8080) for i in range(n)]
    start = time.perf_counter()
    for proxy in proxies:
        Snapshot.from_resources(compile_proxy(index, proxy, credentials))
    total = time.perf_counter() - start
    # the supervisor's path: first build, then one service gains a replica
    builder = SnapshotBuilder()
    start = time.perf_counter()
    builder.build(MeshIndex(config).with_endpoints(endpoints), proxies, lambda p: credentials)
    first = time.perf_counter() - start
    grown = {**endpoints, "svc-7": (endpoint(7), endpoint(7, 1))}
    start = time.perf_counter()
    builder.build(MeshIndex(config).with_endpoints(grown), proxies, lambda p: credentials)
    incremental = time.perf_counter() - start
    assert builder.compiled == 0
    return loaded, total, total / n, first, incremental


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    authority = Authority.create("bench.local", utcnow())
    issued = authority.issue("spiffe://bench.local/ns/default/sa/svc-0", timedelta(hours=1), utcnow())
    credentials = Credentials(issued.identity, issued.chain_pem, issued.key_pem, authority.bundle_pem)
    push(20, credentials)  # warm up
    base = None
    for n in sizes:
        loaded, total, per_proxy, first, incremental = push(n, credentials)
        base = base or per_proxy
        print(
            f"{n:5d} services: load+validate {loaded * 1e3:7.1f} ms, full push {total * 1e3:8.1f} ms "
            f"({per_proxy * 1e3:.2f} ms per proxy, {per_proxy / base:.2f}x the smallest mesh's); "
            f"incremental: first build {first * 1e3:8.1f} ms, endpoint change {incremental * 1e3:6.1f} ms "
            f"({total / incremental:.0f}x faster than a full push)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
