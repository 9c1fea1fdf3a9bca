"""The autoscaler's decision follows the Kubernetes HPA: the documented examples, then properties.

Examples come from kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/ (algorithm
details, multiple metrics, configurable scaling behavior); the properties drive `decide` through
sequences of 15 s syncs as the controller would. Everything is in-memory and virtual-time.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from interstate.autoscale.algorithm import (
    DEFAULT_BEHAVIOR,
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Behavior,
    Decision,
    MetricKind,
    MetricSample,
    PartialRules,
    Recommendation,
    ScalingPolicy,
    ScalingRules,
    Spec,
    State,
    behavior_with_defaults,
    decide,
)

SYNC = 15.0
NO_DOWN_WINDOW = behavior_with_defaults(scale_down=PartialRules(stabilization_window_seconds=0))


def names(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def avg(name: str, target: float, values: Sequence[float], *, pods: Sequence[str] | None = None) -> MetricSample:
    """An AverageValue metric; values[i] is reported by pods[i] (default p0, p1, ...)."""
    pods = names(len(values)) if pods is None else pods
    return MetricSample(name, "AverageValue", target, dict(zip(pods, values, strict=True)))


def util(name: str, target: float, values: Sequence[float]) -> MetricSample:
    return MetricSample(name, "Utilization", target, dict(zip(names(len(values)), values, strict=True)))


def once(
    spec: Spec,
    current: int,
    samples: Sequence[MetricSample],
    *,
    ready: Sequence[str] | None = None,
    unready: Sequence[str] = (),
    now: float = 0.0,
    state: State | None = None,
) -> Decision:
    ready = names(current) if ready is None else ready
    state = State() if state is None else state
    decision, _ = decide("results", spec, current, ready, samples, now, state, unready_pods=unready)
    return decision


def run_load(spec: Spec, start: int, loads: Sequence[float], target: float) -> list[tuple[float, Decision]]:
    """One decision every 15 s; the total load is shared evenly by the current (all ready) replicas."""
    state, current, out = State(), start, []
    for i, load in enumerate(loads):
        now = i * SYNC
        pods = names(current)
        sample = MetricSample("rps", "AverageValue", target, dict.fromkeys(pods, load / current))
        decision, state = decide("results", spec, current, pods, [sample], now, state)
        out.append((now, decision))
        current = decision.desired
    return out


# --- the algorithm details section of the docs -------------------------------------------------


def test_value_twice_the_target_doubles_the_replicas() -> None:
    # "if the current metric value is 200m, and the desired value is 100m, the number of replicas
    # will be doubled, since 200.0 / 100.0 == 2.0"
    d = once(Spec(max_replicas=10), 3, [avg("cpu", 100, [200, 200, 200])])
    assert (d.proposals[0].ratio, d.proposals[0].replicas, d.desired) == (2.0, 6, 6)
    assert d.limit_reason is None and d.stabilization_reason is None


def test_value_half_the_target_halves_the_replicas_once_the_window_allows() -> None:
    # "If the current value is instead 50m, you'll halve the number of replicas"
    sample = avg("cpu", 100, [50] * 4)
    assert once(Spec(max_replicas=10, behavior=NO_DOWN_WINDOW), 4, [sample]).desired == 2
    # With the default 300 s window the replica count the HPA first saw (4) holds the line.
    decision, state = decide("results", Spec(max_replicas=10), 4, names(4), [sample], 0.0, State())
    assert (decision.recommended, decision.desired, decision.stabilization_reason) == (2, 4, "ScaleDownStabilized")
    later, _ = decide("results", Spec(max_replicas=10), 4, names(4), [sample], 300.0, state)
    assert later.desired == 2 and later.stabilization_reason is None


def test_ratio_within_tolerance_keeps_the_replicas() -> None:
    # "The control plane skips any scaling action if the ratio is sufficiently close to 1.0
    # (within a globally-configurable tolerance, 0.1 by default)."
    d = once(Spec(max_replicas=10), 4, [avg("rps", 100, [105] * 4)])
    assert d.desired == 4 and d.proposals[0].replicas == 4
    assert d.reason == "results: stays at 4, rps/replica 105 vs target 100 (within tolerance 10%)"
    assert once(Spec(max_replicas=10, behavior=NO_DOWN_WINDOW), 4, [avg("rps", 100, [91] * 4)]).desired == 4
    assert once(Spec(max_replicas=10), 4, [avg("rps", 100, [112] * 4)]).desired == 5
    assert once(Spec(max_replicas=10, tolerance=0.2), 4, [avg("rps", 100, [112] * 4)]).desired == 4


def test_values_are_compared_in_whole_milli_units_like_the_controller() -> None:
    # 0.1 is 100m exactly, so with no tolerance at all equal values still mean "no change".
    d = once(Spec(max_replicas=10, tolerance=0.0), 3, [avg("cpu", 0.1, [0.1, 0.1, 0.1])])
    assert (d.proposals[0].ratio, d.desired) == (1.0, 3)
    # Per-pod values round up to a milli-unit: 0.0001 counts as 1m.
    assert once(Spec(max_replicas=10), 1, [avg("q", 0.001, [0.0001])]).proposals[0].ratio == 1.0


def test_utilization_truncates_to_a_whole_percent_like_the_controller() -> None:
    # 110.9 % of a 100 % target is reported as 110 %: within tolerance, no scale-up.
    d = once(Spec(max_replicas=10), 2, [util("cpu", 100, [110.9, 110.9])])
    assert (d.proposals[0].current, d.desired) == (110, 2)
    assert once(Spec(max_replicas=10), 2, [util("cpu", 50, [90, 90])]).reason.startswith(
        "results: 2 → 4, cpu 90% vs target 50%"
    )


def test_the_reason_names_the_service_the_change_and_the_metric() -> None:
    d = once(Spec(max_replicas=10), 2, [avg("rps", 100, [340, 340])])
    assert d.reason == "results: 2 → 6, rps/replica 340 vs target 100 (wanted 7; ScaleUpLimit)"
    assert (d.current, d.desired, d.recommended, d.metric, d.limit_reason) == (2, 6, 7, "rps", "ScaleUpLimit")
    assert d.scaled


def test_several_metrics_the_largest_proposal_wins() -> None:
    # "the HorizontalPodAutoscaler controller evaluates each metric, and proposes a new scale
    # based on that metric. The HorizontalPodAutoscaler takes the maximum scale recommended"
    cpu = util("cpu", 50, [90, 90, 90])  # 1.8 * 3 -> 6
    rps = avg("rps", 100, [150, 150, 150])  # 1.5 * 3 -> 5
    d = once(Spec(max_replicas=20), 3, [rps, cpu])
    assert [p.replicas for p in d.proposals] == [5, 6]
    assert (d.desired, d.metric) == (6, "cpu")


def test_an_unusable_metric_is_skipped_when_the_others_scale_up() -> None:
    # "This means that the HPA is still capable of scaling up if one or more metrics give a
    # desiredReplicas greater than the current value."
    cpu = util("cpu", 50, [90, 90, 90])
    silent = avg("rps", 100, [])
    d = once(Spec(max_replicas=20), 3, [silent, cpu])
    assert d.desired == 6 and d.inactive_reason is None
    assert d.proposals[0].replicas is None and d.proposals[0].error == "no sample from a ready pod"
    assert "ignored rps: no sample from a ready pod" in d.reason


def test_an_unusable_metric_blocks_a_scale_down() -> None:
    # "If any of these metrics cannot be converted into a desired replica count ... and a scale
    # down is suggested by the metrics which can be fetched, scaling is skipped."
    low = avg("rps", 100, [10] * 4)
    broken = avg("queue", 5, [float("nan")] * 4)
    d = once(Spec(max_replicas=20, behavior=NO_DOWN_WINDOW), 4, [low, broken])
    assert (d.desired, d.inactive_reason, d.recommended) == (4, "FailedGetPodsMetric", None)
    assert "not scaling down while a metric is unusable" in d.reason
    only_broken = once(Spec(max_replicas=20), 4, [util("cpu", 50, [-1, 3, 3, 3])])
    assert (only_broken.desired, only_broken.inactive_reason) == (4, "FailedGetResourceMetric")
    no_metrics = once(Spec(max_replicas=20), 4, [])
    assert (no_metrics.desired, no_metrics.inactive_reason) == (4, "NoMetrics")


# --- not-ready pods and missing metrics ------------------------------------------------------


def test_unready_pods_count_as_zero_on_a_scale_up() -> None:
    # "the controller conservatively assumes that the not-yet-ready pods are consuming 0% of the
    # desired metric, further dampening the magnitude of a scale up."
    # Two ready pods at twice the target and two starting pods: without them the HPA would go to
    # 4; counting them at 0 gives a ratio of 1.0, within tolerance, so nothing changes.
    d = once(Spec(max_replicas=20), 4, [avg("rps", 100, [200, 200])], ready=names(2), unready=["p2", "p3"])
    assert d.proposals[0].ratio == 2.0 and d.proposals[0].adjusted_ratio == 1.0
    assert d.desired == 4
    # At three times the target the rebalanced ratio is 1.5 over four pods: 6.
    d = once(Spec(max_replicas=20), 4, [avg("rps", 100, [300, 300])], ready=names(2), unready=["p2", "p3"])
    assert (d.proposals[0].adjusted_ratio, d.desired) == (1.5, 6)


def test_a_pod_reporting_without_being_ready_counts_as_unready() -> None:
    sample = avg("rps", 100, [300, 300, 900], pods=["p0", "p1", "p2"])
    d = once(Spec(max_replicas=20), 3, [sample], ready=["p0", "p1"])
    assert (d.proposals[0].current, d.proposals[0].adjusted_ratio, d.desired) == (300, 2.0, 6)


def test_unready_pods_are_ignored_on_a_scale_down() -> None:
    sample = avg("rps", 100, [50, 50, 900, 900])
    d = once(Spec(max_replicas=20, behavior=NO_DOWN_WINDOW), 4, [sample], ready=names(2))
    assert (d.proposals[0].ratio, d.proposals[0].adjusted_ratio, d.desired) == (0.5, None, 1)


def test_missing_pods_count_as_the_target_on_a_scale_down() -> None:
    # "assuming those pods were consuming 100% of the desired value in case of a scale down"
    # Two of four ready pods report 20 % of the target: naively 1 replica; counting the two
    # silent pods at the target gives (20 + 20 + 100 + 100) / 400 = 0.6 -> 3.
    d = once(Spec(max_replicas=20, behavior=NO_DOWN_WINDOW), 4, [avg("rps", 100, [20, 20])])
    assert (d.proposals[0].adjusted_ratio, d.desired) == (0.6, 3)
    # For Utilization a silent pod counts as 100 % of its request, or the target if higher.
    d = once(Spec(max_replicas=20, behavior=NO_DOWN_WINDOW), 4, [util("cpu", 50, [10, 10])])
    assert d.proposals[0].adjusted_ratio == pytest.approx((10 + 10 + 100 + 100) / 4 / 50)
    assert d.desired == 4  # the adjusted ratio (1.1) reverses the direction: don't scale


def test_missing_pods_count_as_zero_on_a_scale_up_and_a_reversal_means_no_change() -> None:
    d = once(Spec(max_replicas=20), 4, [avg("rps", 100, [150, 150])])
    assert (d.proposals[0].ratio, d.proposals[0].adjusted_ratio, d.desired) == (1.5, 0.75, 4)
    d = once(Spec(max_replicas=20), 4, [avg("rps", 100, [400, 400])])
    assert (d.proposals[0].adjusted_ratio, d.desired) == (2.0, 8)


# --- min / max -------------------------------------------------------------------------------


def test_max_replicas_caps_a_scale_up() -> None:
    d = once(Spec(max_replicas=10), 8, [avg("rps", 100, [1000] * 8)])
    assert (d.recommended, d.desired, d.limit_reason) == (80, 10, "TooManyReplicas")


def test_the_rate_limit_is_reported_when_it_binds_before_max() -> None:
    d = once(Spec(max_replicas=10), 2, [avg("rps", 100, [1000] * 2)])
    assert (d.desired, d.limit_reason) == (6, "ScaleUpLimit")  # max(2 + 4 pods, 2 * 100 %)


def test_min_replicas_floors_a_scale_down() -> None:
    d = once(Spec(min_replicas=3, max_replicas=10, behavior=NO_DOWN_WINDOW), 5, [avg("rps", 100, [1] * 5)])
    assert (d.recommended, d.desired, d.limit_reason) == (1, 3, "TooFewReplicas")


def test_replicas_outside_the_bounds_go_straight_to_the_bound() -> None:
    above, state = decide("results", Spec(max_replicas=10), 12, names(12), [avg("rps", 100, [1] * 12)], 0.0, State())
    assert (above.desired, above.limit_reason, above.recommended) == (10, "TooManyReplicas", None)
    assert above.reason == "results: 12 → 10, current replicas above maxReplicas 10"
    assert state.scale_downs[-1].change == 2
    below = once(Spec(min_replicas=3, max_replicas=10), 1, [avg("rps", 100, [1])])
    assert (below.desired, below.limit_reason) == (3, "TooFewReplicas")


def test_zero_replicas_disables_scaling() -> None:
    d = once(Spec(max_replicas=10), 0, [avg("rps", 100, [])])
    assert (d.desired, d.inactive_reason) == (0, "ScalingDisabled")


# --- configurable scaling behavior -----------------------------------------------------------

DOCS_SCALE_DOWN = (ScalingPolicy("Pods", 4, 60), ScalingPolicy("Percent", 10, 60))


def test_docs_scale_down_policies_remove_8_of_80_then_wait_a_period() -> None:
    # "If there are 80 replicas and the target has to be scaled down to 10 replicas then during
    # the first step 8 replicas will be reduced. In the next iteration when the number of
    # replicas is 72, 10% of the pods is 7.2 but the number is rounded up to 8 ... When the
    # number of replicas falls below 40, the first policy (Pods) is applied and 4 replicas will
    # be reduced at a time." (stabilization window 0 here, to see the policies alone)
    behavior = behavior_with_defaults(scale_down=PartialRules(stabilization_window_seconds=0, policies=DOCS_SCALE_DOWN))
    spec = Spec(max_replicas=100, behavior=behavior)
    history = run_load(spec, 80, [950.0] * 100, 100)  # the metric wants ceil(9.5) = 10 replicas
    changes = [(t, d.current, d.desired) for t, d in history if d.scaled]
    assert changes[:3] == [(0.0, 80, 72), (60.0, 72, 64), (120.0, 64, 57)]
    assert all(d.limit_reason == "ScaleDownLimit" for t, d in history if t < 60 and not d.scaled)
    assert [t for t, _, _ in changes] == [60.0 * i for i in range(len(changes))]  # one step per period
    assert all(old - new == 4 for _, old, new in changes if old <= 40 and new > 10)
    assert changes[-1][2] == 10


def test_docs_scale_down_select_min_takes_the_smallest_change() -> None:
    behavior = behavior_with_defaults(
        scale_down=PartialRules(stabilization_window_seconds=0, select_policy="Min", policies=DOCS_SCALE_DOWN)
    )
    d = once(Spec(max_replicas=100, behavior=behavior), 80, [avg("rps", 100, [12.5] * 80)])
    assert (d.recommended, d.desired, d.limit_reason) == (10, 76, "ScaleDownLimit")


def test_percent_100_per_15s_at_most_doubles_per_period() -> None:
    up = ScalingRules(0, "Max", (ScalingPolicy("Percent", 100, 15),))
    spec = Spec(max_replicas=50, behavior=Behavior(scale_up=up, scale_down=DEFAULT_SCALE_DOWN))
    history = run_load(spec, 3, [7950.0] * 7, 100)  # wants 80
    assert [d.desired for _, d in history] == [6, 12, 24, 48, 50, 50, 50]
    assert [d.limit_reason for _, d in history][:5] == ["ScaleUpLimit"] * 4 + ["TooManyReplicas"]
    # Within one period the first doubling is all there is.
    state = State()
    first, state = decide("results", spec, 3, names(3), [avg("rps", 100, [5000 / 3] * 3)], 0.0, state)
    second, _ = decide("results", spec, 6, names(6), [avg("rps", 100, [5000 / 6] * 6)], 5.0, state)
    assert (first.desired, second.desired, second.limit_reason) == (6, 6, "ScaleUpLimit")


def test_default_scale_up_adds_4_pods_or_doubles_whichever_is_more() -> None:
    spec = Spec(max_replicas=100)
    history = run_load(spec, 1, [4950.0] * 6, 100)  # wants 50
    assert [d.desired for _, d in history] == [5, 10, 20, 40, 50, 50]


def test_disabled_select_policy_stops_that_direction() -> None:
    off = ScalingRules(0, "Disabled", (ScalingPolicy("Pods", 1, 15),))
    no_down = Spec(max_replicas=10, behavior=Behavior(scale_up=DEFAULT_SCALE_UP, scale_down=off))
    d = once(no_down, 5, [avg("rps", 100, [1] * 5)])
    assert (d.recommended, d.desired, d.limit_reason) == (1, 5, "ScaleDownLimit")
    assert once(no_down, 5, [avg("rps", 100, [300] * 5)]).desired == 10
    no_up = Spec(max_replicas=10, behavior=Behavior(scale_up=off, scale_down=off))
    d = once(no_up, 5, [avg("rps", 100, [300] * 5)])
    assert (d.desired, d.limit_reason) == (5, "ScaleUpLimit")


def test_scale_down_window_uses_the_highest_recent_recommendation() -> None:
    # Load alternates every minute between 8 and 3 replicas' worth: the 8s in the window keep
    # the service at 8; once the load stays low, the last 8 leaves the window 300 s later.
    loads = ([750.0] * 4 + [250.0] * 4) * 5 + [250.0] * 30
    history = run_load(Spec(max_replicas=20), 8, loads, 100)
    last_high = max(t for t, d in history if d.recommended == 8)
    downs = [(t, d.desired) for t, d in history if d.desired < d.current]
    assert downs == [(last_high + 300.0, 3)]
    assert all(d.stabilization_reason == "ScaleDownStabilized" for t, d in history if d.recommended == 3 and t < 600)


def test_scale_up_window_uses_the_lowest_recent_recommendation() -> None:
    behavior = behavior_with_defaults(scale_up=PartialRules(stabilization_window_seconds=60))
    spec = Spec(max_replicas=20, behavior=behavior)
    spike = run_load(spec, 4, [400.0, 1200.0, 400.0, 400.0, 400.0, 400.0], 100)
    assert all(d.desired == 4 for _, d in spike)
    assert spike[1][1].stabilization_reason == "ScaleUpStabilized"
    sustained = run_load(spec, 4, [400.0] + [1200.0] * 6, 100)
    # Up at 60 s, when the recommendation of 4 made at 0 s leaves the window (rate-limited to 8).
    assert [d.desired for _, d in sustained] == [4, 4, 4, 4, 8, 12, 12]


def test_behavior_with_defaults_fills_each_unset_field() -> None:
    assert behavior_with_defaults() == DEFAULT_BEHAVIOR
    b = behavior_with_defaults(scale_down=PartialRules(policies=(ScalingPolicy("Pods", 1, 60),)))
    assert b.scale_up == DEFAULT_SCALE_UP
    assert b.scale_down == ScalingRules(300, "Max", (ScalingPolicy("Pods", 1, 60),))
    b = behavior_with_defaults(scale_up=PartialRules(select_policy="Min"))
    assert b.scale_up.policies == DEFAULT_SCALE_UP.policies and b.scale_up.select_policy == "Min"


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one policy"):
        ScalingRules(0, "Max", ())
    with pytest.raises(ValueError, match="periodSeconds"):
        ScalingPolicy("Pods", 1, 0)
    with pytest.raises(ValueError, match="minReplicas"):
        Spec(min_replicas=0, max_replicas=3)
    with pytest.raises(ValueError, match="maxReplicas"):
        Spec(min_replicas=4, max_replicas=3)
    with pytest.raises(ValueError, match="target"):
        avg("rps", 0, [1])


def test_a_failed_scale_keeps_the_recommendation_but_not_the_event() -> None:
    before = State()
    d, after = decide("results", Spec(max_replicas=10), 2, names(2), [avg("rps", 100, [300] * 2)], 0.0, before)
    assert d.desired == 6 and after.replicas_added(0.0, 15) == 4
    kept = after.after_failed_scale(before)
    assert kept.recommendations == after.recommendations and kept.scale_ups == ()


def test_history_stays_bounded() -> None:
    state = State()
    for i in range(200):
        _, state = decide("results", Spec(max_replicas=10), 3, names(3), [avg("rps", 100, [100] * 3)], i * SYNC, state)
    assert len(state.recommendations) <= 300 / SYNC + 1


# --- properties --------------------------------------------------------------------------------

policies = st.builds(
    ScalingPolicy,
    type=st.sampled_from(["Pods", "Percent"]),
    value=st.integers(1, 200),
    period_seconds=st.sampled_from([15, 30, 60, 120]),
)
rules = st.builds(
    ScalingRules,
    stabilization_window_seconds=st.sampled_from([0, 15, 60, 300]),
    select_policy=st.sampled_from(["Max", "Min", "Disabled"]),
    policies=st.lists(policies, min_size=1, max_size=3).map(tuple),
)
kinds: st.SearchStrategy[MetricKind] = st.sampled_from(["Utilization", "AverageValue"])
behaviors = st.builds(Behavior, scale_up=rules, scale_down=rules) | st.just(DEFAULT_BEHAVIOR)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    low = draw(st.integers(1, 5))
    return Spec(
        min_replicas=low,
        max_replicas=draw(st.integers(low, low + 30)),
        behavior=draw(behaviors),
        tolerance=draw(st.sampled_from([0.0, 0.05, 0.1, 0.3])),
    )


@st.composite
def pod_samples(draw: st.DrawFn, current: int) -> tuple[list[str], list[str], dict[str, float]]:
    """Ready pods (a prefix of the current ones), starting pods, and who reports what."""
    pods = names(current)
    n_ready = draw(st.integers(1, current))
    ready, starting = pods[:n_ready], pods[n_ready:]
    reporting = [p for p in pods if p == pods[0] or draw(st.booleans())]
    values = {p: draw(st.floats(0, 1000, allow_nan=False)) for p in reporting}
    return ready, starting, values


@settings(max_examples=80, deadline=None)
@given(spec=specs(), start=st.integers(1, 40), data=st.data())
def test_every_decision_lies_within_min_and_max(spec: Spec, start: int, data: st.DataObject) -> None:
    state, current = State(), start
    for step in range(data.draw(st.integers(1, 12))):
        ready, starting, values = data.draw(pod_samples(current))
        samples = [MetricSample("rps", data.draw(kinds), 100, values)]
        d, state = decide("svc", spec, current, ready, samples, step * SYNC, state, unready_pods=starting)
        assert spec.min_replicas <= d.desired <= spec.max_replicas
        current = d.desired


@settings(max_examples=100, deadline=None)
@given(
    spec=specs(),
    data=st.data(),
    position=st.floats(-1, 1),
    target_milli=st.integers(1, 10**6),
    missing=st.integers(0, 3),
    starting=st.integers(0, 3),
)
def test_a_ratio_within_tolerance_never_changes_the_replicas(
    spec: Spec, data: st.DataObject, position: float, target_milli: int, missing: int, starting: int
) -> None:
    # Values on the milli-unit grid the controller works in, so the ratio is exactly value / target.
    value_milli = round(target_milli * (1 + position * spec.tolerance))
    assume(1 - spec.tolerance <= value_milli / target_milli <= 1 + spec.tolerance)
    current = data.draw(st.integers(spec.min_replicas, spec.max_replicas))
    ready = names(current)
    reporting = ready[: max(1, current - missing)]
    sample = MetricSample("rps", "AverageValue", target_milli / 1000, dict.fromkeys(reporting, value_milli / 1000))
    state = data.draw(st.sampled_from([State(), State(recommendations=(Recommendation(-1000.0, 1),))]))
    d, _ = decide("svc", spec, current, ready, [sample], 0.0, state, unready_pods=names(starting, "new"))
    assert d.proposals[0].replicas == current
    assert d.desired == current


@settings(max_examples=120, deadline=None)
@given(spec=specs(), data=st.data(), factor=st.floats(1, 10), kind=kinds)
def test_more_load_never_means_fewer_replicas(spec: Spec, data: st.DataObject, factor: float, kind: MetricKind) -> None:
    current = data.draw(st.integers(spec.min_replicas, spec.max_replicas))
    ready, starting, values = data.draw(pod_samples(current))
    other = MetricSample("queue", "AverageValue", 10, dict.fromkeys(ready, data.draw(st.floats(0, 30))))

    def desired(scale: float) -> int:
        metric = MetricSample("rps", kind, 100, {p: v * scale for p, v in values.items()})
        d, _ = decide("svc", spec, current, ready, [metric, other], 0.0, State(), unready_pods=starting)
        return d.desired

    assert desired(1.0) <= desired(factor)


@settings(max_examples=100, deadline=None)
@given(start=st.integers(1, 20), loads=st.lists(st.floats(0, 3000), min_size=2, max_size=60))
def test_default_behavior_never_scales_down_within_300s_of_a_higher_recommendation(
    start: int, loads: list[float]
) -> None:
    history = run_load(Spec(max_replicas=25), start, loads, 100)
    recommendations = [(0.0, start)] + [(t, d.recommended) for t, d in history if d.recommended is not None]
    for t, d in history:
        if d.desired < d.current:
            recent = [r for at, r in recommendations if t - 300 < at <= t]
            assert max(recent) <= d.desired, (t, d.reason)


@settings(max_examples=100, deadline=None)
@given(
    start=st.integers(1, 20),
    high=st.integers(1, 25),
    low=st.integers(0, 25),
    fraction=st.floats(0.05, 0.95),
    high_syncs=st.integers(1, 4),
    low_syncs=st.integers(1, 4),
    window=st.sampled_from([120, 300]),
    cycles=st.integers(2, 12),
)
def test_an_oscillating_load_scales_down_at_most_once_per_window(
    start: int, high: int, low: int, fraction: float, high_syncs: int, low_syncs: int, window: int, cycles: int
) -> None:
    # The loads are worth a fraction of a replica more than a whole number: at exactly k replicas'
    # worth, the rounding up of milli-units (which the controller shares) makes the recommendation
    # k + 1 at some replica counts and k at others, a change of signal rather than an oscillation.
    behavior = behavior_with_defaults(scale_down=PartialRules(stabilization_window_seconds=window))
    loads = ([100.0 * (max(high, low) + fraction)] * high_syncs + [100.0 * (low + fraction)] * low_syncs) * cycles
    history = run_load(Spec(max_replicas=40, behavior=behavior), start, loads, 100)
    downs = [t for t, d in history if d.desired < d.current]
    assert all(later - earlier >= window for earlier, later in pairwise(downs)), downs
