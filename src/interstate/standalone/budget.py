"""How many replicas this machine runs at most: one budget for the whole standalone mesh.

Each replica is an app and an Envoy side-car, about 35 MB together (`PER_REPLICA_BYTES`, the
figure measured here); 1,000 on one workload would ask for ~35 GB of a 24 GB machine. The budget
is the operator's `--max-replicas`, or else three quarters of the machine's memory at that
size. `check` refuses a mesh (at `up` and `apply`) or a count (`scale`) whose replicas add up
past it, naming the sum and the budget; the autoscaler's counts are clamped to it (`clamp`).
`status` also shows what replicas use now, measured. Called by `standalone.mesh` and `up`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import psutil

from interstate.core.status import ReplicaBudget
from interstate.errors import ConfigError, Issue
from interstate.model.index import MeshConfig
from interstate.model.workload import Workload

PER_REPLICA_BYTES = 40 * 1024 * 1024  # an Envoy (~17 MB) and a small Python app (~18 MB), rounded up
MEMORY_SHARE = 0.75  # what the mesh may plan to take of the machine's memory


def derived(total_bytes: int | None = None) -> int:
    """The budget this machine's memory allows (at least 1)."""
    total = psutil.virtual_memory().total if total_bytes is None else total_bytes
    return max(1, int(total * MEMORY_SHARE // PER_REPLICA_BYTES))


def counts(config: MeshConfig) -> dict[str, int]:
    return {w.name: w.spec.replicas for w in config.of_kind(Workload)}


def check(config: MeshConfig, budget: int) -> None:
    """ConfigError on the largest workload's `spec.replicas` when the mesh's replicas add up
    past `budget`."""
    wanted = counts(config)
    total = sum(wanted.values())
    if total <= budget or not wanted:
        return
    largest = max(config.of_kind(Workload), key=lambda w: w.spec.replicas)
    file, document = config.origin(largest)
    raise ConfigError([Issue(file, document, largest.ref, "spec.replicas", over(wanted, budget))])


def over(wanted: Mapping[str, int], budget: int) -> str:
    """Why a set of counts does not fit the budget, in words."""
    biggest = ", ".join(f"{name} {n}" for name, n in sorted(wanted.items(), key=lambda kv: -kv[1])[:3])
    return (
        f"the mesh would run {sum(wanted.values())} replicas in all ({biggest}); this machine's replica budget "
        f"is {budget} (--max-replicas; by default {MEMORY_SHARE:.0%} of its memory at "
        f"{PER_REPLICA_BYTES // (1024 * 1024)} MB a replica)"
    )


def clamp(service: str, replicas: int, wanted: Mapping[str, int], budget: int) -> int:
    """`replicas` for `service`, lowered so the mesh stays within `budget` (never below 0)."""
    others = sum(n for name, n in wanted.items() if name != service)
    return max(0, min(replicas, budget - others))


def measured(pids: Iterable[tuple[int | None, int | None]]) -> float | None:
    """The resident memory of a replica now, in MB: the mean over (app pid, Envoy pid) pairs of
    running replicas; None when none can be read."""
    sizes = []
    for app, envoy in pids:
        try:
            sizes.append(sum(psutil.Process(p).memory_info().rss for p in (app, envoy) if p is not None))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return round(sum(sizes) / len(sizes) / (1024 * 1024), 1) if sizes else None


def status(config: MeshConfig, budget: int, pids: Iterable[tuple[int | None, int | None]]) -> ReplicaBudget:
    return ReplicaBudget(budget, sum(counts(config).values()), measured(pids), PER_REPLICA_BYTES // (1024 * 1024))
