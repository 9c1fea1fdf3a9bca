"""The standalone autoscaler's parts that need no mesh: CPU measured on a real busy process,
the algorithm's inputs, and `apply` keeping what the autoscaler decided."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpx
import pytest

from interstate.config import load
from interstate.model.autoscaler import HorizontalPodAutoscaler
from interstate.model.index import MeshConfig, MeshIndex
from interstate.standalone.autoscaler import Sampler, keep_autoscaled, samples
from interstate.standalone.protocol import UnitStatus as Replica

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "election-night"


def replica(name: str, pid: int) -> Replica:
    return cast(Replica, SimpleNamespace(name=name, app_pid=pid, admin=None))


def test_cpu_is_measured_per_replica_as_a_share_of_the_request() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:

        async def measure() -> dict[str, float]:
            async with httpx.AsyncClient() as http:
                sampler = Sampler(http)
                pair = [replica("busy-0", busy.pid), replica("idle-0", idle.pid)]
                first = await sampler.sample(pair, cpu_request_m=500)
                assert first == ({}, {})  # nothing to compare with yet, like a new pod
                await asyncio.sleep(1.0)
                return (await sampler.sample(pair, cpu_request_m=500))[1]

        cpu = asyncio.run(measure())
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    # one busy core is 200% of a 500m request (well above 100% even on a loaded machine)
    assert cpu["busy-0"] > 100, cpu
    assert cpu["idle-0"] < 10, cpu


def test_a_restarted_app_starts_its_cpu_measurement_again() -> None:
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    second = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:

        async def measure() -> dict[str, float]:
            async with httpx.AsyncClient() as http:
                sampler = Sampler(http, clock=iter([0.0, 1.0]).__next__)
                await sampler.sample([replica("results-0", first.pid)], cpu_request_m=500)
                return (await sampler.sample([replica("results-0", second.pid)], cpu_request_m=500))[1]

        assert asyncio.run(measure()) == {}
    finally:
        for p in (first, second):
            p.kill()
            p.wait()


def test_samples_follow_the_autoscalers_metrics() -> None:
    hpa = load(EXAMPLE).of_kind(HorizontalPodAutoscaler)[0]
    out = samples(hpa.scaling(), {"results-0": 340.0}, {"results-0": 80.0})
    assert [(s.name, s.kind, s.target, dict(s.per_pod)) for s in out] == [
        ("cpu", "Utilization", 70.0, {"results-0": 80.0}),
        ("requests_per_second", "AverageValue", 100.0, {"results-0": 340.0}),
    ]


def replicas_of(config: MeshConfig, name: str) -> int:
    return MeshIndex(config).workloads[name].spec.replicas


@pytest.mark.parametrize(("running", "kept"), [(6, 6), (40, 30), (1, 2)])
def test_apply_keeps_the_autoscaled_count_within_bounds(running: int, kept: int) -> None:
    config = load(EXAMPLE)  # results: replicas 2, autoscaled 2..30; stats: 1, not autoscaled
    index = MeshIndex(config)
    results = index.workloads["results"]
    scaled = config.replace(
        results, results.model_copy(update={"spec": results.spec.model_copy(update={"replicas": running})})
    )
    stats = MeshIndex(scaled).workloads["stats"]
    now = scaled.replace(stats, stats.model_copy(update={"spec": stats.spec.model_copy(update={"replicas": 3})}))
    applied = keep_autoscaled(now, config)  # the file says results 2, stats 1
    assert replicas_of(applied, "results") == kept
    assert replicas_of(applied, "stats") == 1  # not autoscaled: the file wins


def test_nothing_to_keep_without_an_autoscaler() -> None:
    config = load(EXAMPLE)
    bare = MeshConfig(tuple(r for r in config.resources if not isinstance(r, HorizontalPodAutoscaler)))
    assert keep_autoscaled(config, bare) is bare
