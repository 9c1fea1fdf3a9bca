"""Pure Kubernetes HPA decision algorithm used by the standalone autoscaler.

The standalone autoscaler calls `decide` once per sync period (15 s in Kubernetes) with a
service's `Spec`, its replica count, which pods are ready, one `MetricSample` per metric, the time
(seconds, any epoch) and the `State` returned by the previous call; it gets back a `Decision`
(desired replicas, per-metric proposals, the Kubernetes condition reasons, a sentence) and the
next `State`. No I/O, no clock, no globals: the same inputs give the same outputs. It follows
kube-controller-manager's pkg/controller/podautoscaler (horizontal.go: computeReplicasForMetrics,
normalizeDesiredReplicasWithBehaviors, stabilizeRecommendationWithBehaviors,
convertDesiredReplicasWithBehaviorRate; replica_calculator.go: the per-metric calculation) and
https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/ (autoscaling/v2).

One decision, in order:
1. current == 0: scaling is disabled (condition ScalingDisabled), as in the controller.
   current > maxReplicas or < minReplicas: go straight to the bound, metrics are not read.
2. Per metric: usage ratio = average over ready pods / target; within tolerance keeps `current`,
   otherwise ceil(ratio * ready pods). Pods without a sample are "missing" (counted at the target,
   or at max(100, target) % for Utilization, when scaling down; at 0 when scaling up); not-ready
   pods are dropped, and counted at 0 only when scaling up; if that adjustment lands within
   tolerance or reverses the direction, the metric proposes `current`.
3. The largest proposal wins (the first metric on a tie). A metric whose data is unusable (no
   sample from any ready pod, or a value that is negative, NaN or infinite) is skipped, as the
   controller skips a metric it cannot fetch: the others still decide, unless every metric is
   unusable or the result would be a scale-down; then nothing changes and `inactive_reason` is
   the controller's FailedGetResourceMetric (Utilization) or FailedGetPodsMetric (AverageValue).
4. Stabilization: the result is bounded by the lowest recommendation of the scale-up window and
   the highest of the scale-down window (ScaleUpStabilized / ScaleDownStabilized).
5. Rate limits from the scaling policies over the recorded scale events of each policy's period,
   then min/max (ScaleUpLimit, ScaleDownLimit, TooManyReplicas, TooFewReplicas).

Where this knowingly differs from the controller:
- Metrics are per-pod only: Utilization (a Resource metric's averageUtilization; values are % of
  the request) and AverageValue (Pods metrics, or a Resource averageValue). No Object/External
  metrics. Utilization averages the per-pod percentages, as if every pod had the same request
  (the controller divides summed usage by summed requests). Like the controller, values become
  whole milli-units (rounded up) and are averaged with integer division; Utilization is then
  truncated to a whole percent. So 110.9 % of a 100 % target is 110 %, within tolerance.
- Readiness is the caller's: pods not in `ready_pods` are "unready" for every metric. The
  controller drops unready pods only for CPU (with its cpu-initialization-period and
  initial-readiness-delay timing rules) and pending pods for every metric.
- `Spec.behavior` is always set; by default it is `DEFAULT_BEHAVIOR`, the autoscaling/v2 default.
  The controller takes a legacy path when an HPA has no behavior at all: scale-up capped at
  max(2 * current, 4) per sync with no memory of earlier scale-ups, 300 s scale-down window. At a
  15 s sync the two agree from 4 replicas up; from 1-3 replicas the default behavior allows
  current + 4 (5, 6, 7) where the legacy path allows 4, 4, 6.
- One tolerance for both directions (no alpha per-direction `tolerance`); minReplicas >= 1 (no
  HPAScaleToZero); an HPA with no metrics keeps `current` (Kubernetes would default to CPU 80 %).
- History is pruned instead of overwritten: recommendations older than both stabilization windows
  and scale events older than the longest policy period of either direction are dropped. The
  controller overwrites one stale entry per sync, and may overwrite a scale-down event that a
  longer scale-up period would still have counted; the results only differ in that case.
- `decide` records the scale event as if the caller applied the decision (the controller records
  it after a successful update); if applying fails, use `new_state.after_failed_scale(old_state)`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

__all__ = [
    "DEFAULT_BEHAVIOR",
    "DEFAULT_SCALE_DOWN",
    "DEFAULT_SCALE_UP",
    "Behavior",
    "Decision",
    "InactiveReason",
    "LimitReason",
    "MetricKind",
    "MetricProposal",
    "MetricSample",
    "PartialRules",
    "PolicyType",
    "Recommendation",
    "ScaleEvent",
    "ScalingPolicy",
    "ScalingRules",
    "SelectPolicy",
    "Spec",
    "StabilizationReason",
    "State",
    "behavior_with_defaults",
    "decide",
]

MetricKind: TypeAlias = Literal["Utilization", "AverageValue"]
PolicyType: TypeAlias = Literal["Pods", "Percent"]
SelectPolicy: TypeAlias = Literal["Max", "Min", "Disabled"]
LimitReason: TypeAlias = Literal["ScaleUpLimit", "ScaleDownLimit", "TooManyReplicas", "TooFewReplicas"]
StabilizationReason: TypeAlias = Literal["ScaleUpStabilized", "ScaleDownStabilized"]
# NoMetrics is ours (the controller would default an HPA without metrics to CPU 80 %).
InactiveReason: TypeAlias = Literal["ScalingDisabled", "FailedGetResourceMetric", "FailedGetPodsMetric", "NoMetrics"]

_MAX_PERIOD_SECONDS = 1800  # autoscaling/v2 validation: 0 < periodSeconds <= 1800
_MAX_WINDOW_SECONDS = 3600  # autoscaling/v2 validation: 0 <= stabilizationWindowSeconds <= 3600


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSample:
    """One metric's target and its latest value per pod (pod name -> value).

    Utilization: values and target are % of the pod's request (cpu 90 = 90 %). AverageValue:
    values and target are per pod in the metric's unit (rps 340).
    """

    name: str
    kind: MetricKind
    target: float
    per_pod: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.kind not in ("Utilization", "AverageValue"):
            raise ValueError(f"metric {self.name}: kind {self.kind!r} must be Utilization or AverageValue")
        if not math.isfinite(self.target) or self.target <= 0:
            raise ValueError(f"metric {self.name}: target {self.target!r} must be a positive number")


@dataclass(frozen=True)
class ScalingPolicy:
    """At most `value` pods (Pods) or `value` % of the replicas at the period's start (Percent)
    may be added (or removed) within any `period_seconds`."""

    type: PolicyType
    value: int
    period_seconds: int

    def __post_init__(self) -> None:
        if self.type not in ("Pods", "Percent"):
            raise ValueError(f"scaling policy type {self.type!r} must be Pods or Percent")
        if self.value <= 0:
            raise ValueError(f"scaling policy value {self.value} must be greater than 0")
        if not 0 < self.period_seconds <= _MAX_PERIOD_SECONDS:
            raise ValueError(f"scaling policy periodSeconds {self.period_seconds} must be 1..{_MAX_PERIOD_SECONDS}")


@dataclass(frozen=True)
class ScalingRules:
    """The rules for one direction (HPAScalingRules), fully specified."""

    stabilization_window_seconds: int
    select_policy: SelectPolicy
    policies: tuple[ScalingPolicy, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))
        if not 0 <= self.stabilization_window_seconds <= _MAX_WINDOW_SECONDS:
            raise ValueError(
                f"stabilizationWindowSeconds {self.stabilization_window_seconds} must be 0..{_MAX_WINDOW_SECONDS}"
            )
        if self.select_policy not in ("Max", "Min", "Disabled"):
            raise ValueError(f"selectPolicy {self.select_policy!r} must be Max, Min or Disabled")
        if not self.policies:
            raise ValueError("policies: must specify at least one policy")

    @property
    def longest_period_seconds(self) -> int:
        return max(p.period_seconds for p in self.policies)


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules
    scale_down: ScalingRules


DEFAULT_SCALE_UP = ScalingRules(
    stabilization_window_seconds=0,
    select_policy="Max",
    policies=(ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)),
)
# Kubernetes leaves the scale-down window to the controller's --horizontal-pod-autoscaler-
# downscale-stabilization flag, whose default is 5 minutes.
DEFAULT_SCALE_DOWN = ScalingRules(
    stabilization_window_seconds=300,
    select_policy="Max",
    policies=(ScalingPolicy("Percent", 100, 15),),
)
DEFAULT_BEHAVIOR = Behavior(scale_up=DEFAULT_SCALE_UP, scale_down=DEFAULT_SCALE_DOWN)


@dataclass(frozen=True)
class PartialRules:
    """HPAScalingRules as a user writes them: any field may be left out (None)."""

    stabilization_window_seconds: int | None = None
    select_policy: SelectPolicy | None = None
    policies: tuple[ScalingPolicy, ...] | None = None


def behavior_with_defaults(scale_up: PartialRules | None = None, scale_down: PartialRules | None = None) -> Behavior:
    """Fill what the user left out from the v2 defaults, field by field, as the API server does
    (SetDefaults_HorizontalPodAutoscalerBehavior): a given `policies` replaces the default list."""
    return Behavior(scale_up=_merge(scale_up, DEFAULT_SCALE_UP), scale_down=_merge(scale_down, DEFAULT_SCALE_DOWN))


def _merge(given: PartialRules | None, default: ScalingRules) -> ScalingRules:
    if given is None:
        return default
    return ScalingRules(
        stabilization_window_seconds=(
            default.stabilization_window_seconds
            if given.stabilization_window_seconds is None
            else given.stabilization_window_seconds
        ),
        select_policy=default.select_policy if given.select_policy is None else given.select_policy,
        policies=default.policies if given.policies is None else tuple(given.policies),
    )


@dataclass(frozen=True, kw_only=True)
class Spec:
    """The HPA spec of one service (minReplicas defaults to 1, as in Kubernetes)."""

    min_replicas: int = 1
    max_replicas: int
    behavior: Behavior = DEFAULT_BEHAVIOR
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError(f"minReplicas {self.min_replicas} must be at least 1")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas {self.max_replicas} must be at least minReplicas {self.min_replicas}")
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ValueError(f"tolerance {self.tolerance!r} must be a non-negative number")


# --- state ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """An unstabilized recommendation (the largest metric proposal) and when it was made."""

    at: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    """A scale in one direction: `change` replicas (always > 0) at time `at`."""

    at: float
    change: int


@dataclass(frozen=True)
class State:
    """What the controller remembers per HPA between syncs; start with `State()`."""

    recommendations: tuple[Recommendation, ...] = ()
    scale_ups: tuple[ScaleEvent, ...] = ()
    scale_downs: tuple[ScaleEvent, ...] = ()

    def replicas_added(self, now: float, period_seconds: float) -> int:
        """Replicas added by scale-ups within the last `period_seconds` (strictly after the cutoff)."""
        return _changed_since(self.scale_ups, now - period_seconds)

    def replicas_removed(self, now: float, period_seconds: float) -> int:
        """Replicas removed by scale-downs within the last `period_seconds`."""
        return _changed_since(self.scale_downs, now - period_seconds)

    def with_recommendation(self, now: float, replicas: int, behavior: Behavior) -> State:
        """Record a recommendation, dropping those that no stabilization window can see any more."""
        up_cutoff = now - behavior.scale_up.stabilization_window_seconds
        down_cutoff = now - behavior.scale_down.stabilization_window_seconds
        kept = tuple(r for r in self.recommendations if r.at > up_cutoff or r.at > down_cutoff)
        return replace(self, recommendations=(*kept, Recommendation(now, replicas)))

    def with_scale(self, now: float, previous: int, new: int, behavior: Behavior) -> State:
        """Record a scale from `previous` to `new` replicas (nothing if they are equal)."""
        if new == previous:
            return self
        longest = max(behavior.scale_up.longest_period_seconds, behavior.scale_down.longest_period_seconds)
        cutoff = now - longest
        ups = tuple(e for e in self.scale_ups if e.at > cutoff)
        downs = tuple(e for e in self.scale_downs if e.at > cutoff)
        if new > previous:
            ups = (*ups, ScaleEvent(now, new - previous))
        else:
            downs = (*downs, ScaleEvent(now, previous - new))
        return replace(self, scale_ups=ups, scale_downs=downs)

    def after_failed_scale(self, before: State) -> State:
        """The state to keep when the decision could not be applied: this sync's recommendation
        stays (as in the controller), its scale event is forgotten."""
        return replace(self, scale_ups=before.scale_ups, scale_downs=before.scale_downs)


def _changed_since(events: Iterable[ScaleEvent], cutoff: float) -> int:
    return sum(e.change for e in events if e.at > cutoff)


# --- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricProposal:
    """What one metric asks for, and from what.

    `current` is the average over ready pods with a sample (a whole percent for Utilization),
    `ratio` is current / target, `adjusted_ratio` the ratio after counting missing and unready
    pods conservatively (None when there were none to count). `replicas` is the proposal; None,
    with `error` set, when the metric's data was unusable.
    """

    name: str
    kind: MetricKind
    target: float
    current: float | None
    ratio: float | None
    ready_pods: int
    replicas: int | None
    adjusted_ratio: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Decision:
    """One sync's outcome for one service.

    `recommended` is the largest metric proposal (None when metrics were not used), `stabilized`
    the value after the stabilization windows, `desired` the final count after rate limits and
    min/max. The *_reason fields carry the Kubernetes condition reasons: `stabilization_reason`
    (AbleToScale) when the windows changed the recommendation, `limit_reason` (ScalingLimited)
    when a policy or a bound changed it, `inactive_reason` (ScalingActive false) when no
    metric-based decision was possible.
    """

    service: str
    current: int
    desired: int
    recommended: int | None
    stabilized: int | None
    proposals: tuple[MetricProposal, ...]
    metric: str | None
    stabilization_reason: StabilizationReason | None
    limit_reason: LimitReason | None
    inactive_reason: InactiveReason | None
    reason: str

    @property
    def scaled(self) -> bool:
        return self.desired != self.current


# --- the algorithm ----------------------------------------------------------------------------


def decide(
    service: str,
    spec: Spec,
    current: int,
    ready_pods: Collection[str],
    samples: Sequence[MetricSample],
    now: float,
    state: State,
    *,
    unready_pods: Collection[str] = (),
) -> tuple[Decision, State]:
    """Decide the replica count of `service` at time `now` (seconds).

    `current` is the replica count the service is set to. Pods in `ready_pods` count as ready;
    any other pod that reports a sample, or is listed in `unready_pods` (started but not ready,
    with or without a sample), counts as not ready yet. Returns the decision and the state to pass
    to the next call (it assumes the decision is applied, see `State.after_failed_scale`).
    """
    if current < 0:
        raise ValueError(f"current replicas {current} must not be negative")
    behavior = spec.behavior
    if not state.recommendations:  # recordInitialRecommendation
        state = replace(state, recommendations=(Recommendation(now, current),))

    if current == 0:
        decision = _fixed(
            service, current, 0, "ScalingDisabled", None, "scaling is disabled since the replica count is zero"
        )
        return decision, state
    if current > spec.max_replicas or current < spec.min_replicas:
        above = current > spec.max_replicas
        desired = spec.max_replicas if above else spec.min_replicas
        text = (
            f"current replicas above maxReplicas {desired}"
            if above
            else f"current replicas below minReplicas {desired}"
        )
        decision = _fixed(service, current, desired, None, "TooManyReplicas" if above else "TooFewReplicas", text)
        return decision, state.with_scale(now, current, desired, behavior)

    ready = frozenset(ready_pods)
    not_ready = frozenset(unready_pods)
    proposals = tuple(_propose(s, current, ready, not_ready, spec.tolerance) for s in samples)
    valid = [p for p in proposals if p.replicas is not None]
    invalid = [p for p in proposals if p.replicas is None]
    winner = _winner(valid)
    if winner is None or winner.replicas is None or (invalid and winner.replicas < current):
        inactive: InactiveReason
        if not invalid:
            inactive, text = "NoMetrics", "no metrics"
        else:
            first = invalid[0]  # the controller reports the first failing metric's condition
            inactive = "FailedGetResourceMetric" if first.kind == "Utilization" else "FailedGetPodsMetric"
            if winner is None:
                text = "no usable metric (" + "; ".join(_describe(p) for p in invalid) + ")"
            else:
                text = f"{_describe(winner)}; not scaling down while a metric is unusable ({_describe(first)})"
        decision = Decision(
            service=service,
            current=current,
            desired=current,
            recommended=None,
            stabilized=None,
            proposals=proposals,
            metric=winner.name if winner is not None else None,
            stabilization_reason=None,
            limit_reason=None,
            inactive_reason=inactive,
            reason=f"{service}: stays at {current}, {text}",
        )
        return decision, state

    recommended = winner.replicas
    stabilized = _stabilize(state.recommendations, recommended, current, behavior, now)
    state = state.with_recommendation(now, recommended, behavior)
    stabilization: StabilizationReason | None = None
    if stabilized != recommended:
        stabilization = "ScaleUpStabilized" if recommended >= current else "ScaleDownStabilized"
    desired, limit = _limit_rate(stabilized, current, spec, state, now)
    notes: list[str] = []
    if stabilization is not None or limit is not None:
        notes.append(f"wanted {recommended}")
        if stabilization is not None:
            notes.append(stabilization if limit is None else f"{stabilization} at {stabilized}")
        if limit is not None:
            notes.append(limit)
    elif desired == current and _within(_final_ratio(winner), spec.tolerance):
        notes.append(f"within tolerance {_num(spec.tolerance * 100)}%")
    notes.extend(f"ignored {_describe(p)}" for p in invalid)
    decision = Decision(
        service=service,
        current=current,
        desired=desired,
        recommended=recommended,
        stabilized=stabilized,
        proposals=proposals,
        metric=winner.name,
        stabilization_reason=stabilization,
        limit_reason=limit,
        inactive_reason=None,
        reason=_sentence(service, current, desired, _describe(winner), notes),
    )
    return decision, state.with_scale(now, current, desired, behavior)


def _final_ratio(p: MetricProposal) -> float:
    ratio = p.adjusted_ratio if p.adjusted_ratio is not None else p.ratio
    return math.nan if ratio is None else ratio


def _within(ratio: float, tolerance: float) -> bool:
    return 1.0 - tolerance <= ratio <= 1.0 + tolerance


def _milli(value: float) -> int:
    """A value in whole milli-units, rounded up like Quantity.MilliValue (after rounding away the
    binary noise of a decimal, so 0.1 is 100m, not 101m)."""
    return math.ceil(round(value * 1000, 6))


def _usage(milli: Collection[int], sample: MetricSample) -> tuple[float, float]:
    """(average usage, usage ratio) of per-pod milli-values, with the controller's integer maths.

    Utilization: int32(sum(usage) * 100 / sum(requests)) in GetResourceUtilizationRatio, a whole
    percent (every request taken as equal). AverageValue: sum(milli) / len(milli) in int64 in
    GetMetricUsageRatio, divided by the target's milli-value.
    """
    if sample.kind == "Utilization":
        percent = sum(milli) // (len(milli) * 1000)
        return float(percent), percent / sample.target
    average = sum(milli) // len(milli)
    return average / 1000, average / _milli(sample.target)


def _propose(
    sample: MetricSample, current: int, ready: frozenset[str], unready_extra: frozenset[str], tolerance: float
) -> MetricProposal:
    """One metric's proposal, as ReplicaCalculator.GetResourceReplicas / calcPlainMetricReplicas."""

    def unusable(error: str) -> MetricProposal:
        return MetricProposal(sample.name, sample.kind, sample.target, None, None, 0, None, error=error)

    for pod, value in sorted(sample.per_pod.items()):
        if not math.isfinite(value) or value < 0:
            return unusable(f"pod {pod} reported {value!r}")
    reporting = frozenset(sample.per_pod)
    unready = (reporting | unready_extra) - ready
    missing = ready - reporting
    metrics = {pod: _milli(value) for pod, value in sample.per_pod.items() if pod in ready}
    if not metrics:
        return unusable("no sample from a ready pod")

    usage, ratio = _usage(metrics.values(), sample)

    def proposal(replicas: int, adjusted: float | None = None) -> MetricProposal:
        return MetricProposal(
            sample.name, sample.kind, sample.target, usage, ratio, len(metrics), replicas, adjusted_ratio=adjusted
        )

    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if _within(ratio, tolerance):
            return proposal(current)
        return proposal(math.ceil(ratio * len(metrics)))

    adjusted = dict(metrics)
    if missing:
        if ratio < 1.0:
            # A missing pod counts as using the target (Utilization: 100 % of its request, or the
            # target when that is above 100 %): never scale down on its account.
            fallback = max(100.0, sample.target) if sample.kind == "Utilization" else sample.target
            adjusted.update(dict.fromkeys(missing, _milli(fallback)))
        elif ratio > 1.0:
            adjusted.update(dict.fromkeys(missing, 0))
    if scale_up_with_unready:
        adjusted.update(dict.fromkeys(unready, 0))
    _, new_ratio = _usage(adjusted.values(), sample)
    if _within(new_ratio, tolerance) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return proposal(current, new_ratio)
    replicas = math.ceil(new_ratio * len(adjusted))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return proposal(current, new_ratio)
    return proposal(replicas, new_ratio)


def _winner(valid: Sequence[MetricProposal]) -> MetricProposal | None:
    """The largest proposal; the first metric wins a tie (computeReplicasForMetrics)."""
    best: MetricProposal | None = None
    for p in valid:
        assert p.replicas is not None
        if best is None or best.replicas is None or p.replicas > best.replicas:
            best = p
    return best


def _stabilize(
    history: Sequence[Recommendation], recommended: int, current: int, behavior: Behavior, now: float
) -> int:
    """stabilizeRecommendationWithBehaviors: keep `current` unless every recommendation in the
    scale-up window is above it (then the lowest) or every one in the scale-down window is below
    it (then the highest)."""
    up_cutoff = now - behavior.scale_up.stabilization_window_seconds
    down_cutoff = now - behavior.scale_down.stabilization_window_seconds
    up = recommended
    down = recommended
    for rec in history:
        if rec.at > up_cutoff:
            up = min(up, rec.replicas)
        if rec.at > down_cutoff:
            down = max(down, rec.replicas)
    return min(max(current, up), down)


def _limit_rate(desired: int, current: int, spec: Spec, state: State, now: float) -> tuple[int, LimitReason | None]:
    """convertDesiredReplicasWithBehaviorRate: the policies' rate limits, then min/max."""
    if desired > current:
        limit = max(_scale_up_limit(current, state, spec.behavior.scale_up, now), current)
        if spec.max_replicas > limit:
            return (limit, "ScaleUpLimit") if desired > limit else (desired, None)
        return (spec.max_replicas, "TooManyReplicas") if desired > spec.max_replicas else (desired, None)
    if desired < current:
        limit = min(_scale_down_limit(current, state, spec.behavior.scale_down, now), current)
        if spec.min_replicas < limit:
            return (limit, "ScaleDownLimit") if desired < limit else (desired, None)
        return (spec.min_replicas, "TooFewReplicas") if desired < spec.min_replicas else (desired, None)
    return desired, None


def _period_start(current: int, state: State, period_seconds: int, now: float) -> int:
    return current - state.replicas_added(now, period_seconds) + state.replicas_removed(now, period_seconds)


def _scale_up_limit(current: int, state: State, rules: ScalingRules, now: float) -> int:
    """calculateScaleUpLimitWithScalingRules: the most replicas the policies allow now."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(current, state, policy.period_seconds, now)
        if policy.type == "Pods":
            proposals.append(start + policy.value)
        else:  # rounded up, or a small target could never grow
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
    return min(proposals) if rules.select_policy == "Min" else max(proposals)


def _scale_down_limit(current: int, state: State, rules: ScalingRules, now: float) -> int:
    """calculateScaleDownLimitWithBehaviors: the fewest replicas the policies allow now."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(current, state, policy.period_seconds, now)
        if policy.type == "Pods":
            proposals.append(start - policy.value)
        else:  # truncated, like Go's int32(float64)
            proposals.append(int(start * (1 - policy.value / 100)))
    # "Min" selects the smallest change, which for a scale-down is the largest count.
    return max(proposals) if rules.select_policy == "Min" else min(proposals)


# --- words ------------------------------------------------------------------------------------


def _num(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _describe(p: MetricProposal) -> str:
    if p.error is not None or p.current is None:
        return f"{p.name}: {p.error}"
    if p.kind == "Utilization":
        return f"{p.name} {_num(p.current)}% vs target {_num(p.target)}%"
    return f"{p.name}/replica {_num(p.current)} vs target {_num(p.target)}"


def _sentence(service: str, current: int, desired: int, detail: str, notes: Sequence[str]) -> str:
    head = f"{service}: {current} → {desired}" if desired != current else f"{service}: stays at {current}"
    tail = f" ({'; '.join(notes)})" if notes else ""
    return f"{head}, {detail}{tail}"


def _fixed(
    service: str,
    current: int,
    desired: int,
    inactive: InactiveReason | None,
    limit: LimitReason | None,
    text: str,
) -> Decision:
    head = f"{service}: {current} → {desired}" if desired != current else f"{service}: stays at {current}"
    return Decision(
        service=service,
        current=current,
        desired=desired,
        recommended=None,
        stabilized=None,
        proposals=(),
        metric=None,
        stabilization_reason=None,
        limit_reason=limit,
        inactive_reason=inactive,
        reason=f"{head}, {text}",
    )
