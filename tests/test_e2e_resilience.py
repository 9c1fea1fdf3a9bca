"""End-to-end: resilience policies (issue 4) in a real mesh under `interstate up` — circuit
breaking that fails fast, retries that survive a killed replica but never replay a POST, the retry
budget, route and per-try timeouts, and fault-injection rehearsals switched on and off live.

One mesh serves the module. The test process plays the `caller` app: it sends plain HTTP through
the caller's side-car (its outbound port as an HTTP proxy), exactly as an app calls
`http://stats:8080`. Every upstream runs tests/apps/flaky_app.py, which a test switches (on its
app port, bypassing the mesh) to fail, stall or drop connections, and which records every request
it sees, so attempts are counted where they land. Each scenario has its own upstream service and
TrafficPolicy (see SERVICES), so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from mesh_runner import Load, MeshRun, cli, envoy_stats, running_mesh, wait_for

from interstate.telemetry import flags

pytestmark = pytest.mark.e2e

APPS = Path(__file__).resolve().parent / "apps"
T = TypeVar("T")
FAST_FAIL_BOUND_MS = 100  # far below any wait on an upstream (connect timeout 1 s, route 15 s)

# service -> (replicas, app environment, TrafficPolicy spec beyond its destination)
SERVICES: dict[str, tuple[int, dict[str, str], str]] = {
    "breaker": (1, {}, "outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 5s}\nretries: {attempts: 0}"),
    # same policy; starts with no replica so a test can add one and fail it at once
    "fresh": (0, {}, "outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 5s}\nretries: {attempts: 0}"),
    "trio": (
        3,
        {},
        "outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 2s}\nretries: {attempts: 2, perTryTimeout: 2s}",
    ),
    # retries with the default back-off (25 ms base, 250 ms cap); only the budget differs
    "budgeted": (
        1,
        {"FLAKY_MODE": "fail"},
        "retries: {attempts: 3, perTryTimeout: 1s, retryOn: [5xx], budget: {percent: 20, minConcurrency: 1}}",
    ),
    "unbudgeted": (1, {"FLAKY_MODE": "fail"}, "retries: {attempts: 3, perTryTimeout: 1s, retryOn: [5xx]}"),
    "slow": (1, {"FLAKY_MODE": "delay", "FLAKY_DELAY_S": "2"}, "timeout: 1s"),
    "slowretry": (
        1,
        {"FLAKY_MODE": "delay", "FLAKY_DELAY_S": "2"},
        "retries: {attempts: 2, perTryTimeout: 300ms}\ntimeout: 5s",
    ),
    "faulty": (2, {}, ""),  # no policy: `interstate fault` adds (and clears) one
}


def workload(name: str, replicas: int, env: dict[str, str], calls: list[str]) -> str:
    command = "[python, -m, uvicorn, flaky_app:app, --http, h11, --host, 127.0.0.1, --port, $(PORT), --no-access-log]"
    return (
        f"apiVersion: mesh.codifyhq.io/v1\nkind: Workload\nmetadata: {{name: {name}}}\n"
        f"spec:\n  port: 8080\n  replicas: {replicas}\n  calls: [{', '.join(calls)}]\n"
        f"  run:\n    workingDir: {json.dumps(str(APPS))}\n    command: {command}\n    env: {json.dumps(env)}\n"
        "  readinessProbe: {httpGet: {path: /healthz}}\n"
    )


def traffic_policy(service: str, spec: str) -> str:
    body = "".join(f"  {line}\n" for line in spec.splitlines())
    return (
        f"apiVersion: mesh.codifyhq.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {service}-policy}}\n"
        f"spec:\n  destination: {{service: {service}}}\n{body}"
    )


def write_mesh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mesh.yaml").write_text("apiVersion: mesh.codifyhq.io/v1\nkind: Mesh\nmetadata: {name: resilience}\n")
    (folder / "caller.yaml").write_text(workload("caller", 1, {}, sorted(SERVICES)))
    for name, (replicas, env, spec) in SERVICES.items():
        text = workload(name, replicas, env, [])
        if spec:
            text += "---\n" + traffic_policy(name, spec)
        (folder / f"{name}.yaml").write_text(text)
    return folder


@dataclass
class Mesh:
    """The running mesh, seen from the caller: its side-car as a proxy, its Envoy's stats and
    access log, and every upstream app's switch and request record."""

    run: MeshRun

    @property
    def admin(self) -> str:
        return self.run.admin

    def status(self) -> dict[str, Any]:
        return self.run.status()

    def replicas(self, service: str) -> list[dict[str, Any]]:
        return list(self.status()["services"][service]["replicas"])

    @property
    def caller(self) -> dict[str, Any]:
        return dict(self.replicas("caller")[0]["sidecar"])

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.caller['outbound']}"

    def client(self) -> httpx.Client:
        return httpx.Client(proxy=self.proxy, trust_env=False, timeout=10)

    def stat(self, service: str, name: str) -> int:
        """A counter or gauge of the caller's cluster for `service`, e.g. `upstream_rq_total`."""
        key = f"cluster.outbound|{service}.{name}"
        return envoy_stats(self.caller["admin"], "^" + key.replace("|", r"\|").replace(".", r"\.") + "$")[key]

    def _apps(self, service: str, replica: int | None) -> list[str]:
        ports = [r["app"]["port"] for r in self.replicas(service)]
        return [f"http://127.0.0.1:{p}" for p in (ports if replica is None else [ports[replica]])]

    def set_mode(self, service: str, mode: str, replica: int | None = None, **options: object) -> None:
        for url in self._apps(service, replica):
            response = httpx.put(url + "/__flaky", json={"mode": mode, **options}, trust_env=False, timeout=5)
            response.raise_for_status()

    def seen(self, service: str) -> list[dict[str, Any]]:
        """Every request the service's replicas recorded, oldest first."""
        out: list[dict[str, Any]] = []
        for url in self._apps(service, None):
            out += httpx.get(url + "/__flaky/seen", trust_env=False, timeout=5).json()
        return sorted(out, key=lambda record: float(record["at"]))

    def forget(self, service: str) -> None:
        for url in self._apps(service, None):
            httpx.delete(url + "/__flaky/seen", trust_env=False, timeout=5).raise_for_status()

    def access_log(self, path_prefix: str, count: int) -> list[dict[str, Any]]:
        """The caller side-car's access-log lines for paths under `path_prefix`, once there are
        `count` of them (Envoy flushes its log file every second)."""

        def lines() -> list[dict[str, Any]] | None:
            with open(self.caller["log"], encoding="utf-8") as log:
                found = [json.loads(line) for line in log if line.startswith("{")]
            found = [f for f in found if f["direction"] == "outbound" and str(f["path"]).startswith(path_prefix)]
            return found if len(found) >= count else None

        return wait_for(lines, timeout=10, what=f"{count} access-log lines under {path_prefix}", every=0.2)

    def pids(self) -> dict[str, int]:
        out = {}
        for service in self.status()["services"].values():
            for replica in service["replicas"]:
                out[replica["name"] + "/app"] = replica["app"]["pid"]
                out[replica["name"] + "/sidecar"] = replica["sidecar"]["pid"]
        return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("resilience")
    with running_mesh(write_mesh(root / "mesh"), root / "run") as run:
        yield Mesh(run)


def send_all(mesh: Mesh, url: str, total: int, workers: int, method: str = "GET") -> dict[str, int]:
    """Send `total` requests from `workers` keep-alive clients at once; {x-test-id: status}."""
    results: dict[str, int] = {}
    lock = threading.Lock()
    ids = iter([uuid.uuid4().hex for _ in range(total)])

    def work() -> None:
        with mesh.client() as client:
            while True:
                with lock:
                    test_id = next(ids, None)
                if test_id is None:
                    return
                status = client.request(method, f"{url}/{test_id}", headers={"x-test-id": test_id}).status_code
                with lock:
                    results[test_id] = status

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == total
    return results


class KeepAlive:
    """HTTP/1.1 on one raw socket: little enough client overhead to see Envoy's own latency."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def get(self, host: str, path: str) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        self.sock.sendall(f"GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status = int(self.file.readline().split()[1])
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = self.file.read(length)
        return status, body, time.perf_counter() - start

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# ---- 1. fast fail ------------------------------------------------------------------------------

# Envoy merges health changes that come within `update_merge_window` of a change of the
# cluster's members; interstate sets it to 0 for clusters with outlier detection (see the test
# right after a replica joins). The main fast-fail test still waits this long, harmlessly.
MERGE_WINDOW_S = 1.1
# Envoy ejects on its main thread and tells the worker asynchronously (microseconds); a call sent
# in that gap still reaches the replica. Spacing the failing calls keeps "exactly 3" exact.
EJECTION_HANDOFF_S = 0.05


@pytest.mark.slow
def test_the_circuit_opens_after_3_errors_answers_503_at_once_and_closes_by_itself(mesh: Mesh) -> None:
    mesh.set_mode("breaker", "ok")
    time.sleep(MERGE_WINDOW_S)
    with mesh.client() as client:
        assert client.get("http://breaker:8080/ff/warm").status_code == 200
        mesh.set_mode("breaker", "fail")
        mesh.forget("breaker")
        through = []
        for i in range(3):
            through.append(client.get(f"http://breaker:8080/ff/through/{i}"))
            time.sleep(EJECTION_HANDOFF_S)
        opened = time.monotonic()
        assert [(r.status_code, r.json()["served_by"]) for r in through] == [(500, "breaker-0")] * 3
        assert [s["path"] for s in mesh.seen("breaker")] == [f"/ff/through/{i}" for i in range(3)]

        # The app is healthy again, but the circuit stays open for baseEjectionTime (5 s): every
        # call is answered by the caller's side-car, none reaches the app.
        mesh.set_mode("breaker", "ok")
        attempts = mesh.stat("breaker", "upstream_rq_total")
        raw = KeepAlive(mesh.caller["outbound"])
        try:
            samples = []
            for i in range(1000):
                status, body, took = raw.get("breaker:8080", f"/ff/open/{i}")
                assert (status, body) == (503, b"no healthy upstream")
                samples.append(took)
        finally:
            raw.close()
        for i in range(10):
            response = client.get(f"http://breaker:8080/ff/open/httpx/{i}")
            assert response.status_code == 503 and response.text == "no healthy upstream"
        assert time.monotonic() - opened < 4.5, "the checks above must run while the circuit is open"
        assert mesh.stat("breaker", "upstream_rq_total") == attempts
        assert mesh.stat("breaker", "outlier_detection.ejections_active") == 1
        assert len(mesh.seen("breaker")) == 3
        # `interstate status` says who is ejected since when, and why calls fail, in words.
        shown = cli("status", "--admin", mesh.admin)
        assert shown.returncode == 0, shown.stderr
        assert "EJECTED breaker-0" in shown.stdout and "CONSECUTIVE_5XX" in shown.stdout
        assert f"503 UH: {flags.UH_EJECTED}" in shown.stdout, shown.stdout

        # After baseEjectionTime (checked every `interval`, 1 s) the replica is tried again.
        def resumed() -> float | None:
            response = client.get("http://breaker:8080/ff/resume")
            return time.monotonic() - opened if response.status_code == 200 else None

        closed_after = wait_for(resumed, timeout=15, what="the circuit to close by itself")
    assert 4.9 <= closed_after <= 8.0, closed_after
    assert mesh.stat("breaker", "outlier_detection.ejections_active") == 0

    samples.sort()
    p50, p99 = statistics.median(samples) * 1e3, samples[int(len(samples) * 0.99) - 1] * 1e3
    print(f"fast-fail 503 through the caller's side-car: p50 {p50:.3f} ms, p99 {p99:.3f} ms (1000 calls)")
    # Answered at once, not after any wait on an upstream (a connect timeout is 1 s): how fast is
    # measured in bench/bench_fastfail.py against a baseline in the same run; a timed bound here
    # (p99 < 1 ms, every duration 0 ms) failed on a busy 2-core machine at the same commit.
    assert p99 < FAST_FAIL_BOUND_MS, f"p99 {p99:.3f} ms"

    # The caller's access log says why, and that Envoy spent no time on it.
    opened_lines = mesh.access_log("/ff/open/", 1010)
    assert {(line["status"], line["flags"], line["details"]) for line in opened_lines} == {
        (503, "UH", "no_healthy_upstream")
    }
    assert max(line["duration_ms"] for line in opened_lines) < FAST_FAIL_BOUND_MS
    assert {line["upstream"] for line in opened_lines} == {None}
    through_lines = mesh.access_log("/ff/through/", 3)
    assert {(line["status"], line["flags"], line["attempts"]) for line in through_lines} == {(500, "-", 1)}


def test_the_circuit_opens_at_once_even_right_after_a_replica_joins(mesh: Mesh) -> None:
    scaled = cli("scale", "fresh", "1", "--admin", mesh.admin)
    assert scaled.returncode == 0, scaled.stderr
    wait_for(lambda: mesh.stat("fresh", "membership_healthy") == 1, what="the caller to see the new replica")
    mesh.set_mode("fresh", "fail")
    statuses = []
    with mesh.client() as client:
        for i in range(12):
            statuses.append(client.get(f"http://fresh:8080/joined/{i}").status_code)
            time.sleep(EJECTION_HANDOFF_S)
    assert statuses == [500] * 3 + [503] * 9
    assert len(mesh.seen("fresh")) == 3


# ---- 2. a killed replica, and no replayed POST ----------------------------------------------------


def trio_settled(mesh: Mesh) -> None:
    """Every trio replica ready, answering, and not ejected by the caller."""
    mesh.set_mode("trio", "ok")
    wait_for(
        lambda: (
            all(r["state"] == "ready" for r in mesh.replicas("trio"))
            and mesh.stat("trio", "outlier_detection.ejections_active") == 0
            and mesh.stat("trio", "membership_healthy") == 3
        ),
        what="trio to be whole",
    )


# A response already on its way when its sender is SIGKILLed (headers forwarded, body not yet)
# cannot be retried by any proxy: the caller's side-car has started answering. Such a cut-off
# body is the one failure a kill may cause; a 5xx or a refused connection may not.
CUT_OFF = "peer closed connection without sending complete message body"


@pytest.mark.slow
def test_killing_a_replica_under_load_costs_no_idempotent_get(mesh: Mesh) -> None:
    trio_settled(mesh)
    retries = mesh.stat("trio", "upstream_rq_retry")
    # 6 callers at once: retries are not limited to Envoy's default 3 in flight (see the
    # retry-budget section), so concurrency costs no request either.
    with Load("http://trio:8080/load", workers=6, client=mesh.client) as load:
        wait_for(lambda: load.ok > 100, what="traffic to flow")

        # the app of trio-1 dies (its side-car answers 503 until the app is back) ...
        app = mesh.replicas("trio")[1]["app"]
        os.kill(app["pid"], signal.SIGKILL)
        wait_for(
            lambda: (r := mesh.replicas("trio")[1])["app"]["restarts"] == app["restarts"] + 1 and r["state"] == "ready",
            what="trio-1's app to be restarted",
        )
        mark, served = load.ok, load.seen["trio-1"]
        wait_for(lambda: load.ok > mark + 100 and load.seen["trio-1"] > served, what="trio-1 to serve again")

        # ... then the side-car of trio-2 (connections refused and reset until it is back)
        sidecar = mesh.replicas("trio")[2]["sidecar"]
        os.kill(sidecar["pid"], signal.SIGKILL)
        wait_for(
            lambda: (
                (r := mesh.replicas("trio")[2])["sidecar"]["restarts"] == sidecar["restarts"] + 1
                and r["state"] == "ready"
            ),
            what="trio-2's side-car to be restarted",
        )
        mark, served = load.ok, load.seen["trio-2"]
        wait_for(lambda: load.ok > mark + 100 and load.seen["trio-2"] > served, what="trio-2 to serve again")
    failed = [f for f in load.failures if CUT_OFF not in f]
    if failed:
        time.sleep(1.2)  # Envoy flushes its access log every second
        lines = [json.dumps(x) for x in mesh.access_log("/load", 1) if x["status"] != 200]
        raise AssertionError("GETs failed:\n" + "\n".join([*failed[:5], "caller's access log:", *lines]))
    assert len(load.failures) <= 2, load.failures  # at most one cut-off body per kill
    assert set(load.seen) == {"trio-0", "trio-1", "trio-2"}
    # the kills were felt: calls to the dead replicas were retried on the others
    assert mesh.stat("trio", "upstream_rq_retry") > retries


def test_a_post_that_reached_the_app_is_not_replayed_but_a_get_is_retried(mesh: Mesh) -> None:
    trio_settled(mesh)
    mesh.forget("trio")
    mesh.set_mode("trio", "close", replica=0)  # trio-0 reads each request, then hangs up
    posts: dict[str, int] = {}
    gets: dict[str, int] = {}
    try:
        with mesh.client() as client:
            for _ in range(12):  # round robin: every third call lands on trio-0
                test_id = uuid.uuid4().hex
                response = client.post(f"http://trio:8080/vote/{test_id}", headers={"x-test-id": test_id}, content=b"1")
                posts[test_id] = response.status_code
                if list(posts.values()).count(503) == 2:
                    break

            def get_reached_trio_0() -> bool:
                return any(s["id"] in gets and s["replica"] == "trio-0" for s in mesh.seen("trio"))

            for _ in range(12):
                test_id = uuid.uuid4().hex
                gets[test_id] = client.get(
                    f"http://trio:8080/tally/{test_id}", headers={"x-test-id": test_id}
                ).status_code
                if get_reached_trio_0():
                    break
    finally:
        mesh.set_mode("trio", "ok", replica=0)

    where: defaultdict[str, list[str]] = defaultdict(list)
    for record in mesh.seen("trio"):
        where[record["id"]].append(record["replica"])
    failed = [i for i, status in posts.items() if status != 200]
    assert len(failed) == 2 and set(posts.values()) == {200, 503}, posts
    for test_id in failed:  # the POST reached trio-0 once and was never sent anywhere again
        assert where[test_id] == ["trio-0"]
    for test_id in set(posts) - set(failed):
        assert len(where[test_id]) == 1 and where[test_id] != ["trio-0"]
    post_lines = mesh.access_log("/vote/", len(posts))
    assert {line["attempts"] for line in post_lines if line["path"][len("/vote/") :] in failed} == {1}

    assert set(gets.values()) == {200}, gets  # every GET succeeded ...
    retried = [i for i in gets if "trio-0" in where[i]]
    assert len(retried) == 1  # ... one of them after trio-0 hung up on it, on another replica
    assert where[retried[0]][0] == "trio-0" and len(where[retried[0]]) == 2 and where[retried[0]][1] != "trio-0"


# ---- 3. retry budget ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_retry_budget_bounds_the_attempts_on_a_failing_upstream(mesh: Mesh) -> None:
    """What Envoy's budget does: it caps retries *in flight* (from the moment a retry is scheduled,
    back-off included, until that try ends) at max(percent x active upstream requests,
    minConcurrency). It is not a ratio of totals. The bound "requests x (1 + percent)" holds when
    enough requests run at once and failures are quick, as here; a lone caller is never limited
    (the minConcurrency floor lets each of its requests retry in full); and with many requests at
    once and a back-off much shorter than a try, retries may reach percent / (100 - percent) of
    the requests (25% for 20%). Measured on a 2-core machine: 90 requests 3 at once make ~93-96
    attempts with the budget against all 360 without; 200 requests 10 at once, ~207-217."""

    def attempts(service: str, total: int, workers: int) -> tuple[int, int]:
        mesh.forget(service)
        before = mesh.stat(service, "upstream_rq_total"), mesh.stat(service, "upstream_rq_retry_overflow")
        results = send_all(mesh, f"http://{service}:8080/b", total, workers)
        assert set(results.values()) == {500}
        seen = mesh.seen(service)
        # the app's count and the caller's Envoy agree on what reached the upstream
        assert len(seen) == mesh.stat(service, "upstream_rq_total") - before[0]
        assert {s["id"] for s in seen} == set(results)
        return len(seen), mesh.stat(service, "upstream_rq_retry_overflow") - before[1]

    # The same load with and without the budget. (At most 3 at once: without a budget Envoy's
    # default circuit breaker allows 3 retries in flight, which would blur the comparison.)
    unbudgeted, _ = attempts("unbudgeted", 90, 3)
    budgeted, refused = attempts("budgeted", 90, 3)
    print(f"90 failing requests, 3 at once: {unbudgeted} attempts without a budget, {budgeted} with 20%")
    assert unbudgeted == 90 * 4  # attempts: 3 -> four tries each, nothing limits them
    assert budgeted <= 90 * 1.2 and refused > 0

    budgeted, refused = attempts("budgeted", 200, 10)
    print(f"200 failing requests, 10 at once: {budgeted} attempts with a 20% budget")
    # many at once: up to percent / (100 - percent) more (above); 218-242 seen on a 2-core machine
    assert budgeted <= 200 * 1.25 and refused > 0  # without the budget: 800

    alone, refused = attempts("budgeted", 5, 1)
    assert (alone, refused) == (5 * 4, 0)  # the minConcurrency floor, not the percentage, applies


def test_without_a_budget_every_request_gets_its_retries_under_concurrency(mesh: Mesh) -> None:
    mesh.forget("unbudgeted")
    refused = mesh.stat("unbudgeted", "upstream_rq_retry_overflow")
    results = send_all(mesh, "http://unbudgeted:8080/c", 100, 10)
    assert set(results.values()) == {500}
    assert mesh.stat("unbudgeted", "upstream_rq_retry_overflow") == refused
    assert len(mesh.seen("unbudgeted")) == 100 * 4


# ---- 4. timeouts ---------------------------------------------------------------------------------


def test_a_slow_upstream_hits_the_route_timeout(mesh: Mesh) -> None:
    mesh.forget("slow")
    test_id = uuid.uuid4().hex
    with mesh.client() as client:
        start = time.monotonic()
        response = client.get(f"http://slow:8080/t/{test_id}", headers={"x-test-id": test_id})
        took = time.monotonic() - start
    assert response.status_code == 504 and response.text == "upstream request timeout"
    assert 0.95 <= took <= 1.5, took
    assert [s["id"] for s in mesh.seen("slow")] == [test_id]  # timed out once, not retried
    (line,) = mesh.access_log(f"/t/{test_id}", 1)
    assert (line["status"], line["flags"], line["details"], line["attempts"]) == (
        504,
        "UT",
        "response_timeout",
        1,
    )


def test_a_slow_upstream_hits_the_per_try_timeout_three_times(mesh: Mesh) -> None:
    mesh.forget("slowretry")
    test_id = uuid.uuid4().hex
    with mesh.client() as client:
        start = time.monotonic()
        response = client.get(f"http://slowretry:8080/t/{test_id}", headers={"x-test-id": test_id})
        took = time.monotonic() - start
    assert response.status_code == 504
    # 3 tries x 300 ms plus two jittered back-offs (< 25 ms, < 75 ms)
    assert 0.9 <= took <= 1.3, took
    assert [s["id"] for s in mesh.seen("slowretry")] == [test_id] * 3
    (line,) = mesh.access_log(f"/t/{test_id}", 1)
    assert (line["status"], line["flags"], line["details"], line["attempts"]) == (
        504,
        "URX,UT",  # retry limit exceeded, after a timeout
        "upstream_per_try_timeout",
        3,
    )


# ---- 5. fault injection --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_50_percent_abort_rehearsal_fails_half_the_calls_and_ends_without_a_restart(mesh: Mesh) -> None:
    pids = mesh.pids()
    mesh.forget("faulty")
    on = cli("fault", "faulty", "--abort", "50", "--admin", mesh.admin)
    assert on.returncode == 0, on.stderr
    during = send_all(mesh, "http://faulty:8080/rehearsal", 2000, 4)
    errors = [i for i, status in during.items() if status != 200]
    rate = len(errors) / len(during)
    print(f"50% abort rehearsal: {rate:.1%} of 2000 calls failed")
    assert set(during.values()) == {200, 503}
    # binomial, n = 2000: one standard deviation is 1.1%; runs have shown 46.2% and 52.6%, so the
    # bound is 4.5 sigma (a false alarm less than once in 100,000 runs), not 2.7 as it was
    assert 0.45 <= rate <= 0.55, rate
    # the aborted calls never left the caller's side-car; the others reached the app once each
    reached = [s["id"] for s in mesh.seen("faulty")]
    assert len(reached) == len(set(reached)) and set(reached) == set(during) - set(errors)
    lines = mesh.access_log("/rehearsal/", 2000)
    assert {line["path"].rsplit("/", 1)[1] for line in lines if line["flags"] == "FI"} == set(errors)

    off = cli("fault", "faulty", "--off", "--admin", mesh.admin)
    assert off.returncode == 0, off.stderr
    after = send_all(mesh, "http://faulty:8080/after", 300, 4)
    assert Counter(after.values()) == {200: 300}
    assert mesh.pids() == pids  # nothing was restarted
    assert all(r["app"]["restarts"] == 0 for r in mesh.replicas("faulty"))
