"""TrafficPolicy resilience values a user can get wrong: each is refused by the loader (and so by
`interstate validate`, `up` and `apply`) with an issue naming the exact field, and the sound
neighbours of each mistake load. No processes are started except one `interstate validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
from mesh_runner import cli

from interstate.config.loader import decode_sources
from interstate.errors import ConfigError, Issue
from interstate.model import TrafficPolicy

STATS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: stats}
spec: {port: 8080, run: {command: [python, -c, pass]}}
"""


def policy(*sections: str) -> str:
    body = "".join(f"  {s}\n" for s in sections)
    return (
        "apiVersion: mesh.codifyhq.io/v1\nkind: TrafficPolicy\nmetadata: {name: stats-policy}\n"
        f"spec:\n  destination: {{service: stats}}\n{body}"
    )


def issues_of(*sections: str) -> list[Issue]:
    with pytest.raises(ConfigError) as caught:
        decode_sources({"mesh.yaml": STATS + "---\n" + policy(*sections)})
    issues: list[Issue] = caught.value.issues
    return issues


def loads(*sections: str) -> TrafficPolicy:
    config = decode_sources({"mesh.yaml": STATS + "---\n" + policy(*sections)})
    (found,) = [r for r in config.resources if isinstance(r, TrafficPolicy)]
    return found


REFUSED = [
    # negative counts
    (
        "outlierDetection: {consecutiveErrors: -3}",
        "spec.outlierDetection.consecutiveErrors",
        "greater than or equal to 1",
    ),
    (
        "outlierDetection: {consecutiveGatewayErrors: -1}",
        "spec.outlierDetection.consecutiveGatewayErrors",
        "greater than or equal to 1",
    ),
    ("retries: {attempts: -1, perTryTimeout: 1s}", "spec.retries.attempts", "greater than or equal to 0"),
    ("connectionPool: {maxConnections: -5}", "spec.connectionPool.maxConnections", "greater than or equal to 1"),
    ("connectionPool: {maxPendingRequests: 0}", "spec.connectionPool.maxPendingRequests", "greater than or equal to 1"),
    (
        "retries: {attempts: 1, budget: {percent: 20, minConcurrency: -1}}",
        "spec.retries.budget.minConcurrency",
        "greater than or equal to 0",
    ),
    # durations
    ("outlierDetection: {baseEjectionTime: 30x}", "spec.outlierDetection.baseEjectionTime", "'30x' is not a duration"),
    ("timeout: 0s", "spec.timeout", "must be more than 0s"),
    ("retries: {attempts: 1, perTryTimeout: 0s}", "spec.retries.perTryTimeout", "must be more than 0s"),
    # percentages over 100
    (
        "outlierDetection: {maxEjectionPercent: 101}",
        "spec.outlierDetection.maxEjectionPercent",
        "less than or equal to 100",
    ),
    ("retries: {attempts: 2, budget: {percent: 150}}", "spec.retries.budget.percent", "less than or equal to 100"),
    ("fault: {abort: {percent: 101}}", "spec.fault.abort.percent", "less than or equal to 100"),
    ("fault: {delay: {percent: 120, fixedDelay: 1s}}", "spec.fault.delay.percent", "less than or equal to 100"),
    # retries without a bound: no perTryTimeout and no budget (the default attempts count too)
    ("retries: {attempts: 3}", "spec.retries.perTryTimeout", "retries need a bound"),
    ("retries: {retryOn: [5xx]}", "spec.retries.perTryTimeout", "retries need a bound"),
    # RING_HASH without hashOn, and a fault that does nothing
    ("loadBalancer: {policy: RING_HASH}", "spec.loadBalancer.hashOn", "RING_HASH needs hashOn"),
    ("fault: {}", "spec.fault", "give abort, delay or both"),
]


@pytest.mark.parametrize(("section", "field", "message"), REFUSED, ids=[r[1] + ":" + r[0] for r in REFUSED])
def test_a_bad_resilience_value_is_refused_naming_its_field(section: str, field: str, message: str) -> None:
    (issue,) = issues_of(section)
    assert (issue.file, issue.document, issue.resource) == ("mesh.yaml", 2, "TrafficPolicy stats-policy")
    assert issue.field == field
    assert message in issue.message


ACCEPTED = [
    "outlierDetection: {consecutiveErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}",
    "outlierDetection: {maxEjectionPercent: 0}",
    "retries: {attempts: 0}",  # no retries need no bound
    "retries: {attempts: 3, perTryTimeout: 1s}",
    "retries: {attempts: 3, budget: {percent: 20, minConcurrency: 0}}",  # the budget is the bound
    "retries: {attempts: 10, perTryTimeout: 250ms, budget: {percent: 100}}",
    "fault: {abort: {percent: 100, status: 503}}",
    "fault: {delay: {percent: 0, fixedDelay: 2s}}",
    "loadBalancer: {policy: RING_HASH, hashOn: {header: x-user}}",
    "connectionPool: {maxConnections: 1, maxPendingRequests: 1, maxRequests: 1, maxRequestsPerConnection: 1}",
]


@pytest.mark.parametrize("section", ACCEPTED)
def test_the_sound_neighbours_of_each_mistake_load(section: str) -> None:
    assert loads(section).spec.destination.service == "stats"


def test_every_mistake_of_one_policy_is_reported_at_once() -> None:
    found = issues_of(
        "outlierDetection: {consecutiveErrors: -3, baseEjectionTime: 30x}",
        "retries: {attempts: 3}",
        "fault: {abort: {percent: 101}}",
    )
    assert [i.field for i in found] == [
        "spec.fault.abort.percent",
        "spec.outlierDetection.baseEjectionTime",
        "spec.outlierDetection.consecutiveErrors",
        "spec.retries.perTryTimeout",
    ]


def test_interstate_validate_names_each_bad_field(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        STATS
        + "---\n"
        + policy(
            "outlierDetection: {consecutiveErrors: -3, baseEjectionTime: 30x}",
            "retries: {attempts: 3, budget: {percent: 150}}",
        )
    )
    result = cli("validate", str(mesh), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    where = f"error: {mesh}: document 2 (TrafficPolicy stats-policy): "
    for field in (
        "spec.outlierDetection.consecutiveErrors",
        "spec.outlierDetection.baseEjectionTime: '30x' is not a duration",
        "spec.retries.budget.percent",
    ):
        assert where + field in result.stderr, result.stderr
    assert "3 error(s)" in result.stderr
