"""End-to-end: a canary TrafficSplit of stats (v1 90% / v2 10%), changed live under load."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from mesh_runner import EXAMPLE, MeshRun, cli, running_mesh

pytestmark = pytest.mark.e2e

SPLIT = """\
apiVersion: mesh.codifyhq.io/v1
kind: TrafficSplit
metadata: { name: stats-canary }
spec:
  service: stats
  backends: [{ service: stats, weight: 90 }, { service: stats-v2, weight: 10 }]
  pin: { header: { name: x-canary, value: "true" }, backend: stats-v2 }
  stickyBy: { header: x-session }   # without it (all calls below but the sticky test): by weight
"""


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshRun]:
    import shutil

    root = tmp_path_factory.mktemp("split")
    mesh = root / "mesh"
    shutil.copytree(EXAMPLE, mesh)
    stats = (mesh / "stats.yaml").read_text()
    (mesh / "stats-v2.yaml").write_text(
        stats.replace("name: stats", "name: stats-v2").replace("version: v1", "version: v2")
    )
    (mesh / "split.yaml").write_text(SPLIT)
    gateway = mesh / "mesh.yaml"  # clients reach stats through the ingress too: /stats
    gateway.write_text(
        gateway.read_text().replace(
            "- { pathPrefix: /results, service: results }",
            "- { pathPrefix: /results, service: results }\n    - { pathPrefix: /stats, service: stats }",
        )
    )
    with running_mesh(mesh, root / "run") as run:
        yield run


def proxy(mesh: MeshRun) -> str:
    return f"http://127.0.0.1:{mesh.status()['services']['results']['replicas'][0]['sidecar']['outbound']}"


def calls(
    mesh: MeshRun, count: int, headers: dict[str, str] | None = None, workers: int = 8, ingress: bool = False
) -> Counter[str]:
    """`count` calls to stats through a results side-car, as results would make them
    (http://stats:8080/healthz), or from outside through the ingress (/stats)."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    local = threading.local()
    outbound = proxy(mesh)
    url = mesh.ingress + "/stats" if ingress else "http://stats:8080/healthz"

    def one(_: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(proxy=None if ingress else outbound, trust_env=False, timeout=10)
        response = local.client.get(url, headers=headers or {})
        key = response.json()["served_by"] if response.status_code == 200 else f"HTTP {response.status_code}"
        with lock:
            seen[key] += 1

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(count)))
    return seen


def test_a_90_10_split_sends_10_percent_to_the_canary(canary: MeshRun) -> None:
    seen = calls(canary, 10_000, ingress=True)  # from outside, through the ingress
    assert set(seen) == {"stats-0", "stats-v2-0"}, seen  # no failures, no one else
    share = seen["stats-v2-0"] / 10_000
    assert 0.09 <= share <= 0.11, seen


def test_the_canary_header_always_lands_on_v2(canary: MeshRun) -> None:
    assert calls(canary, 200, {"x-canary": "true"}) == Counter({"stats-v2-0": 200})
    assert calls(canary, 200, {"x-canary": "true"}, ingress=True) == Counter({"stats-v2-0": 200})


def test_a_session_keeps_its_version_while_sessions_split_by_weight(canary: MeshRun) -> None:
    per_session = {f"s-{n}": calls(canary, 10, {"x-session": f"s-{n}"}, workers=2) for n in range(100)}
    assert all(len(seen) == 1 for seen in per_session.values()), per_session  # sticky
    on_v2 = sum(1 for seen in per_session.values() if "stats-v2-0" in seen)
    assert 1 <= on_v2 <= 30, on_v2  # ~10 of 100 sessions (binomial: 0 or >30 is < 1e-4 likely)


def test_shifting_to_50_50_under_load_drops_no_request(canary: MeshRun) -> None:
    results: list[Counter[str]] = []
    load = threading.Thread(target=lambda: results.append(calls(canary, 4000, workers=4)))
    load.start()
    shifted = cli("split", "stats", "v2=50", "--admin", canary.admin)
    load.join(60)
    assert shifted.returncode == 0, shifted.stderr
    assert "stats 50%, stats-v2 50%" in shifted.stdout
    assert all(key.startswith("stats") for key in results[0]), results[0]  # every call answered
    after = calls(canary, 2000)
    assert set(after) == {"stats-0", "stats-v2-0"}
    assert 0.45 <= after["stats-v2-0"] / 2000 <= 0.55, after
    # the split kept its stickiness: each session still sees one version
    assert all(len(calls(canary, 10, {"x-session": f"s-{n}"}, workers=2)) == 1 for n in range(20))
