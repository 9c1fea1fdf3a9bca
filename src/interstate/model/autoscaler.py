"""The `HorizontalPodAutoscaler` resource (`autoscaling/v2`): the chapter's HPA, read as written.

    metadata.name                       any name (e.g. results-hpa)
    spec.scaleTargetRef                 {apiVersion, kind, name}: kind Deployment (as on Kubernetes)
                                        or Workload; name is the Workload it scales
    spec.minReplicas / maxReplicas      1..1000; minReplicas defaults to 1
    spec.metrics[]                      what standalone mode can measure (none given: CPU 80%, as
                                        on Kubernetes); the largest proposal wins
      type: Resource                    resource {name: cpu, target {type: Utilization, averageUtilization: 70}}
      type: ContainerResource           the same with `container: <workload name>` (the app's container)
      type: Pods                        pods {metric {name: requests_per_second}, target {type: AverageValue,
                                        averageValue: "100"}}  (`http_requests_per_second` also works)
    spec.behavior.scaleUp / scaleDown   stabilizationWindowSeconds (0..3600), selectPolicy (Max | Min |
                                        Disabled), policies[] {type: Pods | Percent, value, periodSeconds (1..1800)}

Field names, bounds and defaults are Kubernetes'. CPU utilization is the app's CPU (never its
side-car's) as a percentage of the workload's `spec.resources.requests.cpu`, so a CPU metric needs
that request (`check_cpu_requests`, a rule over two kinds). Requests per second are the requests
the workload's side-cars receive (their inbound listener), per replica. At most one autoscaler per
workload. `scaling()` gives the whole thing with Kubernetes' defaults applied, as plain values, for
the standalone autoscaler; `kube/autoscale.py` turns it into Kubernetes objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, field_validator, model_validator

from interstate.autoscale.algorithm import (
    DEFAULT_BEHAVIOR,
    Behavior,
    PartialRules,
    ScalingPolicy,
    ScalingRules,
    behavior_with_defaults,
)
from interstate.model.base import API_VERSION as MESH_API_VERSION
from interstate.model.base import Claim, Name, Reference, Resource, Strict, echo
from interstate.model.workload import Workload, parse_quantity

AUTOSCALING_API_VERSION = "autoscaling/v2"
MAX_REPLICAS = 1000  # as Workload.spec.replicas
MAX_INT32 = 2**31 - 1
MAX_PERIOD_SECONDS = 1800  # Kubernetes' bounds (pkg/apis/autoscaling/validation)
MAX_STABILIZATION_WINDOW_SECONDS = 3600
DEFAULT_CPU_UTILIZATION = 80  # Kubernetes' target when an HPA lists no metrics
MIN_QUANTITY = Decimal("1e-9")  # 1n: Kubernetes rounds finer quantities up to it

# What scaleTargetRef.kind may be, with the apiVersion that goes with it (optional in the YAML).
TARGET_KINDS = {"Deployment": "apps/v1", "Workload": MESH_API_VERSION}
METRIC_TYPES = ("Resource", "ContainerResource", "Pods", "Object", "External")
METRIC_BLOCKS = {"Resource": "resource", "ContainerResource": "containerResource", "Pods": "pods"}
REQUEST_RATE_METRICS = ("requests_per_second", "http_requests_per_second")
SUPPORTED = (
    "standalone mode supports type Resource or ContainerResource with name cpu and target type "
    "Utilization (averageUtilization), and type Pods with metric name requests_per_second "
    "(or http_requests_per_second) and target type AverageValue (averageValue)"
)


def _positive_quantity(value: Any) -> str:
    number = parse_quantity(value)
    if number <= 0:
        raise ValueError(f"{echo(value)} must be positive, e.g. 100 or 500m")
    if number < MIN_QUANTITY:  # Kubernetes keeps nothing finer; the autoscaler divides by it
        raise ValueError(f"{echo(value)} is less than 1n, the smallest quantity; e.g. 100 or 500m")
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


# A Kubernetes quantity ("100", "500m", or a YAML number), kept as written.
Quantity = Annotated[str, BeforeValidator(_positive_quantity)]


class MetricTargetType(StrEnum):
    UTILIZATION = "Utilization"
    VALUE = "Value"
    AVERAGE_VALUE = "AverageValue"


class SelectPolicy(StrEnum):
    MAX = "Max"  # the policy allowing the largest change
    MIN = "Min"  # the policy allowing the smallest change
    DISABLED = "Disabled"  # no scaling in this direction


class ScalingPolicyType(StrEnum):
    PODS = "Pods"  # at most `value` replicas per period
    PERCENT = "Percent"  # at most `value` % of the current replicas per period


# --- the resource as written (Kubernetes' shapes and names) --------------------------------------


class CrossVersionObjectReference(Strict):
    api_version: str | None = None
    kind: str
    name: Name

    @model_validator(mode="after")
    def _kind(self) -> CrossVersionObjectReference:
        expected = TARGET_KINDS.get(self.kind)
        if expected is None:
            raise ValueError(
                f"kind: {self.kind!r} cannot be scaled here; use Deployment (as on Kubernetes) or Workload, "
                "with name: the workload"
            )
        if self.api_version is not None and self.api_version != expected:
            raise ValueError(f"apiVersion: {self.api_version!r} does not go with kind {self.kind}; use {expected}")
        return self


class MetricTarget(Strict):
    type: MetricTargetType
    average_utilization: int | None = Field(default=None, ge=1, le=MAX_INT32, strict=True)
    average_value: Quantity | None = None
    value: Quantity | None = None

    @model_validator(mode="after")
    def _one_value(self) -> MetricTarget:
        fields = {
            MetricTargetType.UTILIZATION: "averageUtilization",
            MetricTargetType.AVERAGE_VALUE: "averageValue",
            MetricTargetType.VALUE: "value",
        }
        given = {
            "averageUtilization": self.average_utilization,
            "averageValue": self.average_value,
            "value": self.value,
        }
        wanted = fields[self.type]
        if given[wanted] is None:
            raise ValueError(f"{wanted}: required when type is {self.type}")
        for name, value in given.items():
            if name != wanted and value is not None:
                raise ValueError(f"{name}: does not go with type {self.type}; give only {wanted}")
        return self


class ResourceMetricSource(Strict):
    name: str = Field(min_length=1)
    target: MetricTarget


class ContainerResourceMetricSource(Strict):
    name: str = Field(min_length=1)
    container: Name
    target: MetricTarget


class MetricIdentifier(Strict):
    name: str = Field(min_length=1)
    selector: dict[str, Any] | None = None  # Kubernetes has it; standalone mode refuses it


class PodsMetricSource(Strict):
    metric: MetricIdentifier
    target: MetricTarget


class MetricSpec(Strict):
    type: str
    resource: ResourceMetricSource | None = None
    container_resource: ContainerResourceMetricSource | None = None
    pods: PodsMetricSource | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_type(cls, data: Any) -> Any:
        # Before the fields: an External metric is "not supported", not "external: unknown field".
        if isinstance(data, dict) and isinstance(data.get("type"), str):
            kind = data["type"]
            if kind not in METRIC_TYPES:
                raise ValueError(f"type: {kind!r} is not a metric type; {SUPPORTED}")
            if kind not in METRIC_BLOCKS:
                raise ValueError(f"type: {kind} metrics are not supported; {SUPPORTED}")
        return data

    @model_validator(mode="after")
    def _supported(self) -> MetricSpec:
        blocks = {"resource": self.resource, "containerResource": self.container_resource, "pods": self.pods}
        wanted = METRIC_BLOCKS[self.type]
        if blocks[wanted] is None:
            raise ValueError(f"{wanted}: required when type is {self.type}")
        for name, block in blocks.items():
            if name != wanted and block is not None:
                raise ValueError(f"{name}: does not go with type {self.type}; give only {wanted}")
        source = self.resource or self.container_resource
        if source is not None:
            if source.name != "cpu":
                raise ValueError(f"{wanted}.name: {source.name!r} is not supported; {SUPPORTED}")
            if source.target.type is not MetricTargetType.UTILIZATION:
                raise ValueError(
                    f"{wanted}.target.type: {source.target.type} is not supported for cpu; use Utilization "
                    "with averageUtilization (percent of the workload's CPU request)"
                )
        if self.pods is not None:
            metric = self.pods.metric
            if metric.name not in REQUEST_RATE_METRICS:
                raise ValueError(f"pods.metric.name: {metric.name!r} is not supported; {SUPPORTED}")
            if metric.selector is not None:
                raise ValueError("pods.metric.selector: not supported in standalone mode; leave it out")
            if self.pods.target.type is not MetricTargetType.AVERAGE_VALUE:
                raise ValueError(
                    f"pods.target.type: {self.pods.target.type} is not supported for {metric.name}; use "
                    'AverageValue with averageValue (requests per second per replica, e.g. "100")'
                )
        return self


class HPAScalingPolicy(Strict):
    type: ScalingPolicyType
    value: int = Field(ge=1, le=MAX_INT32, strict=True)
    period_seconds: int = Field(ge=1, le=MAX_PERIOD_SECONDS, strict=True)


class HPAScalingRules(Strict):
    stabilization_window_seconds: int | None = Field(
        default=None, ge=0, le=MAX_STABILIZATION_WINDOW_SECONDS, strict=True
    )
    select_policy: SelectPolicy | None = None
    policies: list[HPAScalingPolicy] | None = None

    @field_validator("policies")
    @classmethod
    def _some(cls, policies: list[HPAScalingPolicy] | None) -> list[HPAScalingPolicy] | None:
        if policies is not None and not policies:
            raise ValueError("give at least one policy, or leave policies out for Kubernetes' defaults")
        return policies


class HorizontalPodAutoscalerBehavior(Strict):
    scale_up: HPAScalingRules | None = None
    scale_down: HPAScalingRules | None = None


class HorizontalPodAutoscalerSpec(Strict):
    scale_target_ref: CrossVersionObjectReference
    min_replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS, strict=True)
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS, strict=True)
    metrics: list[MetricSpec] = Field(default_factory=list)
    behavior: HorizontalPodAutoscalerBehavior | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HorizontalPodAutoscalerSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas: {self.max_replicas} is less than minReplicas ({self.min_replicas})")
        app = self.scale_target_ref.name
        for i, metric in enumerate(self.metrics):
            source = metric.container_resource
            if source is not None and source.container != app:
                raise ValueError(
                    f"metrics[{i}].containerResource.container: {source.container!r} is not the app's "
                    f"container; interstate names it after the workload: {app!r}"
                )
        return self


# --- the same, with Kubernetes' defaults applied, as plain values ---------------------------------


@dataclass(frozen=True)
class CpuUtilization:
    """Average CPU of the app processes as a percentage of the workload's CPU request."""

    percent: int
    container: str | None = None  # ContainerResource's container (the app); None for Resource


@dataclass(frozen=True)
class RequestRate:
    """Requests per second the workload's side-cars receive, averaged over its replicas."""

    per_replica: float  # the target, e.g. 100.0
    metric: str = REQUEST_RATE_METRICS[0]  # the name as written
    quantity: str = ""  # the target as written, e.g. "100" or "500m"


MetricGoal = CpuUtilization | RequestRate


@dataclass(frozen=True)
class Scaling:
    """Everything the standalone autoscaler needs, Kubernetes' defaults applied."""

    workload: str
    min_replicas: int
    max_replicas: int
    metrics: tuple[MetricGoal, ...]
    scale_up: ScalingRules
    scale_down: ScalingRules


def _partial(written: HPAScalingRules | None) -> PartialRules | None:
    """The rules as written; `behavior_with_defaults` fills the rest, field by field."""
    if written is None:
        return None
    policies = written.policies
    return PartialRules(
        written.stabilization_window_seconds,
        None if written.select_policy is None else written.select_policy.value,
        None if policies is None else tuple(ScalingPolicy(p.type.value, p.value, p.period_seconds) for p in policies),
    )


class HorizontalPodAutoscaler(Resource):
    KIND: ClassVar[str] = "HorizontalPodAutoscaler"
    API_VERSION: ClassVar[str] = AUTOSCALING_API_VERSION

    spec: HorizontalPodAutoscalerSpec

    @property
    def workload(self) -> str:
        """The name of the Workload it scales."""
        return self.spec.scale_target_ref.name

    @property
    def min_replicas(self) -> int:
        return self.spec.min_replicas

    @property
    def max_replicas(self) -> int:
        return self.spec.max_replicas

    @property
    def behavior(self) -> Behavior:
        """spec.behavior with Kubernetes' defaults (the autoscaling/v2 defaults) filled in."""
        written = self.spec.behavior
        if written is None:
            return DEFAULT_BEHAVIOR
        return behavior_with_defaults(_partial(written.scale_up), _partial(written.scale_down))

    @property
    def scale_up(self) -> ScalingRules:
        return self.behavior.scale_up

    @property
    def scale_down(self) -> ScalingRules:
        return self.behavior.scale_down

    @property
    def metrics(self) -> tuple[MetricGoal, ...]:
        """The targets in order; none written means Kubernetes' default, CPU at 80%."""
        if not self.spec.metrics:
            return (CpuUtilization(DEFAULT_CPU_UTILIZATION),)
        goals: list[MetricGoal] = []
        for metric in self.spec.metrics:
            if metric.resource is not None:
                goals.append(CpuUtilization(_utilization(metric.resource.target)))
            elif metric.container_resource is not None:
                source = metric.container_resource
                goals.append(CpuUtilization(_utilization(source.target), source.container))
            elif metric.pods is not None:
                average = metric.pods.target.average_value
                assert average is not None  # MetricTarget checked it
                goals.append(RequestRate(float(parse_quantity(average)), metric.pods.metric.name, average))
        return tuple(goals)

    def scaling(self) -> Scaling:
        return Scaling(
            self.workload, self.min_replicas, self.max_replicas, self.metrics, self.scale_up, self.scale_down
        )

    def references(self) -> Iterable[Reference]:
        yield Reference("spec.scaleTargetRef.name", "Workload", self.workload)

    def claims(self) -> Iterable[Claim]:
        yield Claim(
            "spec.scaleTargetRef.name",
            f"HorizontalPodAutoscaler/{self.workload}",
            f"the autoscaler of workload {self.workload!r}",
        )


def _utilization(target: MetricTarget) -> int:
    assert target.average_utilization is not None  # MetricSpec checked it
    return target.average_utilization


def check_cpu_requests(resources: Sequence[Resource]) -> Iterator[tuple[Resource, str, str]]:
    """A CPU metric needs its workload's CPU request: (autoscaler, field, message) for each that
    lacks one. A rule over two kinds, run by the config layer (see `model.MESH_RULES`)."""
    workloads = {r.name: r for r in resources if isinstance(r, Workload)}
    for hpa in resources:
        if not isinstance(hpa, HorizontalPodAutoscaler):
            continue
        workload = workloads.get(hpa.workload)
        if workload is None or workload.spec.resources.requests.cpu is not None:
            continue  # an unknown workload is reported as a reference
        need = (
            f"CPU utilization is a percentage of the workload's CPU request, and Workload {workload.name} "
            'has none; give it spec.resources.requests.cpu (e.g. "500m")'
        )
        if not hpa.spec.metrics:
            yield hpa, "spec.metrics", f"none given, so Kubernetes' default applies (CPU at 80%): {need}"
        for i, metric in enumerate(hpa.spec.metrics):
            if metric.resource is not None:
                yield hpa, f"spec.metrics[{i}].resource", need
            elif metric.container_resource is not None:
                yield hpa, f"spec.metrics[{i}].containerResource", need
