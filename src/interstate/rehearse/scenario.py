"""The chapter's election-night scenario as a plan: five phases, each a request rate for a while,
one of them with a stats hiccup (a fault on calls to stats through the admin API).

    baseline   r rps           the evening before the polls close
    surge      r × 20 rps      the polls close and every newsroom refreshes
    hiccup     r × 20 rps      ... while stats fails (abort a share of its calls)
    recovery   r × 20 rps      the fault is off; the mesh must be healthy again
    cool-down  r rps           back to normal

Only the plan lives here (pure). What actually happened is measured elsewhere: a rehearsal's
report never takes a number from the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_PATH = "/results"
DEFAULT_HEADERS = ("x-policy-ctx: FEC-F101",)
# hey's -q is a rate per worker and a worker waits for its answer before the next tick, so a
# worker must have time to spare: at most this many requests per second each.
MAX_WORKER_QPS = 5.0


@dataclass(frozen=True)
class Hiccup:
    """The hiccup: `service`'s own side-cars fail `percent` % of its calls with `status`
    (`fault.at: SERVICE`), so its callers see real failures and their breakers may trip."""

    service: str = "stats"
    percent: int = 50
    status: int = 503

    def body(self) -> dict[str, object]:
        """The admin API's `fault` body (POST /services/{service}/fault)."""
        # at the service itself: its callers see real failures, so their circuit breakers trip
        return {"abort": {"percent": self.percent, "status": self.status}, "at": "SERVICE"}

    def describe(self) -> str:
        return f"{self.service} fails {self.percent}% of calls with {self.status} (its callers' breakers may trip)"


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    rps: float
    fault: bool = False  # the hiccup's fault is on during this phase

    def workers(self, max_worker_qps: float = MAX_WORKER_QPS) -> tuple[int, float]:
        """hey's (-c, -q) for this rate: enough workers that each sends at most
        `max_worker_qps`, and c × q = rps."""
        return workers_for(self.rps, max_worker_qps)


def workers_for(rps: float, max_worker_qps: float = MAX_WORKER_QPS) -> tuple[int, float]:
    if rps <= 0 or max_worker_qps <= 0:
        raise ValueError("rates must be positive")
    workers = max(1, math.ceil(rps / max_worker_qps - 1e-9))
    return workers, rps / workers


@dataclass(frozen=True)
class Scenario:
    baseline_rps: float = 10.0
    surge: float = 20.0  # the surge rate is baseline × surge
    phase_seconds: float = 20.0
    fault: Hiccup = field(default_factory=Hiccup)
    path: str = DEFAULT_PATH
    headers: tuple[str, ...] = DEFAULT_HEADERS
    max_worker_qps: float = MAX_WORKER_QPS

    def __post_init__(self) -> None:
        if self.baseline_rps <= 0:
            raise ValueError("the baseline rate must be positive")
        if self.surge < 1:
            raise ValueError("the surge factor must be at least 1")
        if self.phase_seconds < 1:
            raise ValueError("a phase lasts at least 1 s")
        if not 0 < self.fault.percent <= 100:
            raise ValueError("the fault percent must be 1..100")
        if not 200 <= self.fault.status <= 599:
            raise ValueError("the fault status must be 200..599")
        if not self.path.startswith("/"):
            raise ValueError("the path must start with /")

    @property
    def surge_rps(self) -> float:
        return self.baseline_rps * self.surge

    def phases(self) -> list[Phase]:
        r, s, t = self.baseline_rps, self.surge_rps, self.phase_seconds
        return [
            Phase("baseline", t, r),
            Phase("surge", t, s),
            Phase("hiccup", t, s, fault=True),
            Phase("recovery", t, s),
            Phase("cool-down", t, r),
        ]

    def describe(self) -> str:
        return (
            f"baseline {self.baseline_rps:g} rps, surge ×{self.surge:g} = {self.surge_rps:g} rps, "
            f"{self.phase_seconds:g} s per phase; hiccup: {self.fault.describe()}"
        )


# `--short`: a whole rehearsal in about 20 s, for tests and a quick look.
SHORT = Scenario(baseline_rps=4.0, surge=20.0, phase_seconds=3.0)
