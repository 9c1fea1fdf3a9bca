"""HTTP/2 between side-cars against HTTP/1.1, measured: throughput and latency across one hop.

Two meshes run side by side on 127.0.0.1 (two `interstate up --auto-ports`, real Envoy side-cars
configured over ADS, mutual TLS), identical but for `Mesh.spec.hopProtocol`: `http2` (the
default: the caller side-car multiplexes its calls over one mutual-TLS connection, ALPN h2) and
`http1` (one call at a time per connection). In each mesh a `client` workload (`python -m
http.server`; it only has to exist) calls `upstream`: nginx (nginx-light, one worker, no access
log) answering a fixed 12-byte JSON body with `return 200`, its configuration templated per port
by `sed` before `exec nginx` (the supervisor stops it with SIGTERM to its process group). wrk
loads the client's side-car outbound listener (the app's HTTP proxy, routed by Host) with
`Host: upstream:8080`, so every request goes

    wrk -> caller side-car -> [the hop under test: mTLS, h2 or HTTP/1.1] -> callee side-car -> nginx

For each mesh, and for "direct" (wrk straight to the http2 mesh's nginx, the reference): the
throughput with 16 connections (2 wrk threads), and the latency p50/p99 with 1 connection
(percentiles from wrk's HdrHistogram, through a Lua `done` hook). After a warm-up, trials are
interleaved for `--rounds` rounds of `--seconds` each: direct, then the two meshes in an order
that alternates from round to round (http2, http1 / http1, http2 / ...) so drift cancels out.
Reported: the median over the rounds, the ratios http2/http1 (the median of the per-round ratios,
each between trials of the same round, with their range), and the CPU time the two side-car
Envoys (one worker thread each) spent per request, under load and with 1 connection (from
/proc/PID/task/*/schedstat): on a small machine wrk, 2 Envoys and nginx share the cores, so req/s
and latency depend on the machine's load, and the Envoys' CPU per request is the steadier number;
the CPU each process used during the throughput trials says what bounded them. Finally, from the
Envoys' admin stats, the connections the caller side-car opened to the callee
(`cluster.outbound|upstream.upstream_cx_total`, `_http2_total`, `_http1_total`) and those the
callee's inbound listener accepted by protocol, proving which protocol each mesh used (exit 1 if
not as configured; any wrk error or non-2xx answer stops the run).

Needs wrk and nginx (Debian: `apt-get install wrk nginx-light`; `make bench` installs them).

    .venv/bin/python bench/bench_hops.py [--seconds 5] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench_boundary import cpu_seconds  # the same measure as the boundary bench (bench/ is on the path)

ROOT = Path(__file__).resolve().parents[1]
INTERSTATE = [sys.executable, "-m", "interstate.cli"]
READY = re.compile(r"mesh ready ingress=(\S+) admin=(\S+) dashboard=(\S+)")
PROTOCOLS = ("http2", "http1")
HOST = "upstream:8080"
BODY = '{"ok": true}'

NGINX_CONF = """worker_processes 1;
pid @DIR@/nginx-@PORT@.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path @DIR@/body-@PORT@;
  proxy_temp_path @DIR@/proxy-@PORT@;
  fastcgi_temp_path @DIR@/fastcgi-@PORT@;
  uwsgi_temp_path @DIR@/uwsgi-@PORT@;
  scgi_temp_path @DIR@/scgi-@PORT@;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:@PORT@;
    location / { default_type application/json; return 200 '@BODY@'; }
  }
}
"""

# wrk's summary as one JSON line: HdrHistogram percentiles in µs, and every kind of error.
DONE_LUA = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %.0f, "duration_us": %.0f, "p50_us": %.0f, "p99_us": %.0f, "errors": %.0f}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def mesh_yaml(protocol: str, nginx: str, folder: Path) -> str:
    upstream = (
        f'sed -e "s/@PORT@/$PORT/g" {folder}/nginx.conf.in > {folder}/nginx-$PORT.conf'
        f' && exec {nginx} -e stderr -p {folder} -c {folder}/nginx-$PORT.conf -g "daemon off;"'
    )
    client = ["python", "-m", "http.server", "$(PORT)", "--bind", "127.0.0.1"]
    return f"""apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: {{name: hops-{protocol}}}
spec: {{trustDomain: hops.test, hopProtocol: {protocol}}}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{name: upstream}}
spec: {{port: 8080, run: {json.dumps({"command": ["sh", "-c", upstream]})}}}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{name: client}}
spec: {{port: 8080, calls: [upstream], run: {json.dumps({"command": client})}}}
"""


class Mesh:
    """One `interstate up` on free ports; `stop` ends it and anything it started, for sure."""

    def __init__(self, protocol: str, folder: Path, nginx: str) -> None:
        self.protocol = protocol
        self.folder = folder
        (folder / "mesh").mkdir(parents=True)
        (folder / "nginx.conf.in").write_text(NGINX_CONF.replace("@DIR@", str(folder)).replace("@BODY@", BODY))
        (folder / "mesh" / "mesh.yaml").write_text(mesh_yaml(protocol, nginx, folder))
        run = folder / "run"
        ca = run / "ca"
        self.token_file = run / "admin.token"
        self.output: list[str] = []
        self.admin = ""
        self.started: list[psutil.Process] = []
        self.proc = subprocess.Popen(
            [*INTERSTATE, "up", str(folder / "mesh"), "--auto-ports", "--run-dir", str(run), "--ca-dir", str(ca)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                if match := READY.search(line):
                    self.admin = match.group(2)
                    self.started = self.descendants()
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        logs = "".join(f"--- {log.name}:\n{log.read_text()[-2000:]}" for log in self.folder.glob("run/logs/*.app.log"))
        raise RuntimeError(f"the {self.protocol} mesh did not become ready:\n{''.join(self.output[-40:])}{logs}")

    def status(self) -> dict[str, Any]:
        headers = {"authorization": "Bearer " + self.token_file.read_text().strip()}
        response = httpx.get(self.admin + "/status", headers=headers, timeout=10, trust_env=False)
        return dict(response.raise_for_status().json())

    def replica(self, service: str) -> dict[str, Any]:
        return dict(self.status()["services"][service]["replicas"][0])

    def descendants(self) -> list[psutil.Process]:
        try:
            return list(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        started = self.started + self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for child in started:  # nothing may outlive `interstate up`: kill stragglers regardless
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


@dataclass
class Target:
    label: str
    port: int
    host: str | None  # the Host header (the outbound listener routes by it); None: wrk's own
    envoys: tuple[int, ...] = ()  # caller and callee side-car pids: CPU per request
    rate: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_per_request: list[float] = field(default_factory=list)  # the 2 side-car Envoys', under load
    cpu_per_request_1: list[float] = field(default_factory=list)  # the same, with 1 connection
    wall: float = 0.0  # seconds of the throughput trials, and the CPU seconds spent meanwhile:
    machine_cpu: float = 0.0  # by the whole machine
    wrk_cpu: float = 0.0  # by wrk
    envoy_cpu: list[float] = field(default_factory=lambda: [0.0, 0.0])  # by the caller, the callee side-car


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores; interrupts included: loopback traffic)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(wrk_bin: str, script: Path, target: Target, threads: int, connections: int, seconds: int) -> dict[str, float]:
    """One bounded wrk run against `target`; its summary (µs), failing on any error."""
    argv = [wrk_bin, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", "-s", str(script)]
    if target.host is not None:
        argv += ["-H", f"Host: {target.host}"]
    done = subprocess.run(
        [*argv, f"http://127.0.0.1:{target.port}/"], capture_output=True, text=True, timeout=seconds + 30
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    summary: dict[str, float] = json.loads(line[len("BENCH ") :])
    if summary["errors"] or not summary["requests"]:
        raise RuntimeError(f"wrk against {target.label} saw errors or no answers:\n{done.stdout}")
    return summary


def wait_routed(port: int, timeout: float = 30) -> None:
    """Until the caller side-car routes `upstream` to a ready replica (listeners, routes and
    endpoints all pushed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/", headers={"host": HOST}, timeout=2, trust_env=False)
            if answer.status_code == 200 and answer.text == BODY:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the side-car with outbound port {port} never routed {HOST}")


def envoy_stats(socket: str, pattern: str) -> dict[str, int]:
    """Stats of one of the mesh's side-cars, read over its admin socket (status: sidecar.admin)."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=5, trust_env=False) as client:
        response = client.get("http://envoy-admin/stats", params={"filter": pattern, "format": "json"})
    return {s["name"]: int(s["value"]) for s in response.json()["stats"] if "value" in s}


def ratio(xs: list[float], ys: list[float]) -> str:
    per_round = [x / y for x, y in zip(xs, ys, strict=True)]
    return f"{statistics.median(per_round):.2f}x [{min(per_round):.2f}-{max(per_round):.2f}]"


def run(seconds: int, rounds: int, connections: int) -> int:
    wrk_bin = shutil.which("wrk")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if wrk_bin is None or nginx is None:
        print("needs wrk and nginx: apt-get install wrk nginx-light (or `make bench`)", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="bench-hops-"))
    script = folder / "done.lua"
    script.write_text(DONE_LUA)
    meshes: dict[str, Mesh] = {}
    try:
        for protocol in PROTOCOLS:  # both start at once; each on its own free ports
            meshes[protocol] = Mesh(protocol, folder / protocol, nginx)
        targets: dict[str, Target] = {}
        for protocol, mesh in meshes.items():
            mesh.wait_ready()
            caller, callee = mesh.replica("client"), mesh.replica("upstream")
            outbound = int(caller["sidecar"]["outbound"])
            wait_routed(outbound)
            pids = (int(caller["sidecar"]["pid"]), int(callee["sidecar"]["pid"]))
            targets[protocol] = Target(protocol, outbound, HOST, pids)
        direct = Target("direct", int(meshes["http2"].replica("upstream")["app"]["port"]), None)
        everything = [direct, *targets.values()]

        for target in everything:  # warm-up: connections opened, TLS sessions and pools set up
            wrk(wrk_bin, script, target, 2, connections, 1)
            wrk(wrk_bin, script, target, 1, 1, 1)
        for r in range(rounds):
            order = [direct, *(targets[p] for p in (PROTOCOLS if r % 2 == 0 else PROTOCOLS[::-1]))]
            for target in order:
                before = [cpu_seconds(pid) for pid in target.envoys]
                machine0, wrk0, start = busy_seconds(), children_cpu(), time.perf_counter()
                load = wrk(wrk_bin, script, target, 2, connections, seconds)
                wall, machine1 = time.perf_counter() - start, busy_seconds()
                target.wrk_cpu += children_cpu() - wrk0
                target.machine_cpu += machine1 - machine0
                target.wall += wall
                target.rate.append(load["requests"] / (load["duration_us"] / 1e6))
                if target.envoys:
                    spent = [cpu_seconds(pid) - b for pid, b in zip(target.envoys, before, strict=True)]
                    target.envoy_cpu = [x + y for x, y in zip(target.envoy_cpu, spent, strict=True)]
                    target.cpu_per_request.append(sum(spent) / load["requests"])
                before = [cpu_seconds(pid) for pid in target.envoys]
                latency = wrk(wrk_bin, script, target, 1, 1, seconds)
                if target.envoys:
                    spent = [cpu_seconds(pid) - b for pid, b in zip(target.envoys, before, strict=True)]
                    target.cpu_per_request_1.append(sum(spent) / latency["requests"])
                target.p50.append(latency["p50_us"] / 1e3)
                target.p99.append(latency["p99_us"] / 1e3)

        hop_stats = {}
        for protocol, mesh in meshes.items():
            caller, callee = mesh.replica("client"), mesh.replica("upstream")
            out = envoy_stats(
                caller["sidecar"]["admin"],
                r"^cluster\.outbound\|upstream\.upstream_(cx_total|cx_http[12]_total|rq_total)$",
            )
            into = envoy_stats(callee["sidecar"]["admin"], r"^http\.inbound\.downstream_cx_(total|http[12]_total)$")
            hop_stats[protocol] = (out, into)
    finally:
        for mesh in meshes.values():
            mesh.stop()
        shutil.rmtree(folder, ignore_errors=True)

    report(direct, targets, rounds, seconds, connections)
    cores = psutil.cpu_count() or 1
    print(f"\nCPU during the throughput trials, in cores (of {cores}; each Envoy has one worker thread):")
    for target in (direct, *targets.values()):
        out_cores, in_cores = (cpu / target.wall for cpu in target.envoy_cpu)
        envoys = f", caller side-car Envoy {out_cores:.2f}, callee side-car Envoy {in_cores:.2f}"
        print(
            f"  {target.label:6} whole machine {target.machine_cpu / target.wall:.2f},"
            f" wrk {target.wrk_cpu / target.wall:.2f}{envoys if target.envoys else ''}"
        )
    if any(target.machine_cpu / target.wall > 0.9 * cores for target in targets.values()):
        print(
            "  the cores are saturated: wrk, 2 Envoys and nginx share them; the CPU µs/request is the steadier number"
        )
    elif any(cpu / target.wall > 0.85 for target in targets.values() for cpu in target.envoy_cpu):
        print("  a side-car Envoy (one worker thread) is the bottleneck: req/s ratios mirror its CPU cost")
    else:
        print(
            "  no core is saturated: req/s is set by the round trips across wrk, 2 Envoys and nginx, which share"
            " the cores (scheduling included); read the CPU µs/request too"
        )

    print("\nconnections over the hop (counters since the meshes started, warm-up included):")
    good = True
    for protocol in PROTOCOLS:
        out, into = hop_stats[protocol]
        prefix = "cluster.outbound|upstream.upstream_"
        cx, h1, h2, rq = (out.get(prefix + k, -1) for k in ("cx_total", "cx_http1_total", "cx_http2_total", "rq_total"))
        i_cx, i_h1, i_h2 = (
            into.get("http.inbound.downstream_cx_" + k, -1) for k in ("total", "http1_total", "http2_total")
        )
        print(
            f"  {protocol}: caller side-car opened {cx} (http2 {h2}, http1 {h1}) for {rq} requests;"
            f" callee side-car's inbound accepted {i_cx} (http2 {i_h2}, http1 {i_h1})"
        )
        used, other = (h2, h1) if protocol == "http2" else (h1, h2)
        accepted, refused = (i_h2, i_h1) if protocol == "http2" else (i_h1, i_h2)
        good = good and cx > 0 and used == cx and other == 0 and accepted == i_cx and refused == 0
    print("every hop used the configured protocol" if good else "a hop did NOT use the configured protocol")
    return 0 if good else 1


def report(direct: Target, targets: dict[str, Target], rounds: int, seconds: int, connections: int) -> None:
    print(
        f"{rounds} rounds of {seconds} s per trial; throughput with {connections} connections (2 wrk threads),"
        f" latency with 1 connection; medians over the rounds; all on 127.0.0.1\n"
    )
    print(f"{'':36} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}   {'side-car Envoys, CPU µs/req':>27}")
    print(f"{'':36} {'':>8} {'':>7} {'':>7}   {f'{connections} connections':>14} {'1 connection':>12}")
    rows = [
        (direct, "direct (wrk -> nginx)"),
        (targets["http2"], "hopProtocol http2 (2 side-cars)"),
        (targets["http1"], "hopProtocol http1 (2 side-cars)"),
    ]
    for target, what in rows:
        cpu = f"{'-':>14} {'-':>12}"
        if target.envoys:
            cpu = (
                f"{statistics.median(target.cpu_per_request) * 1e6:14.1f}"
                f" {statistics.median(target.cpu_per_request_1) * 1e6:12.1f}"
            )
        print(
            f"{what:36} {statistics.median(target.rate):8.0f} {statistics.median(target.p50):7.3f}"
            f" {statistics.median(target.p99):7.3f}   {cpu}"
        )
    h2, h1 = targets["http2"], targets["http1"]
    print("\nhttp2/http1 (median of the per-round ratios [range]):")
    print(f"  throughput {ratio(h2.rate, h1.rate)}   p50 {ratio(h2.p50, h1.p50)}   p99 {ratio(h2.p99, h1.p99)}")
    print(
        f"  side-car Envoys' CPU per request: {connections} connections {ratio(h2.cpu_per_request, h1.cpu_per_request)}"
        f"   1 connection {ratio(h2.cpu_per_request_1, h1.cpu_per_request_1)}"
    )
    for target in (h2, h1):
        rate = statistics.median(target.rate) / statistics.median(direct.rate)
        p50 = statistics.median(target.p50) / statistics.median(direct.p50)
        print(f"  {target.label} against direct (medians): throughput {rate:.2f}x, p50 {p50:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per trial")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16, help="for the throughput trials")
    args = parser.parse_args()
    return run(args.seconds, args.rounds, args.connections)


if __name__ == "__main__":
    raise SystemExit(main())
