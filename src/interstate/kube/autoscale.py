"""Kubernetes objects for the mesh's HorizontalPodAutoscalers: a native HPA, or a KEDA ScaledObject.

Called by `interstate manifests autoscale`; pure (the validated mesh in, plain dicts out, no I/O).
Reads `model.autoscaler`. One object per HorizontalPodAutoscaler resource:

- CPU metrics only -> an `autoscaling/v2` HorizontalPodAutoscaler. A `Resource` cpu metric becomes
  `ContainerResource` on the app's container: a pod's CPU includes its Envoy side-car's, which would
  distort the utilization. minReplicas, maxReplicas and behavior are kept as written.
- a requests-per-second metric -> a KEDA `ScaledObject` (keda.sh/v1alpha1) with one `prometheus`
  trigger per such metric, and the CPU metrics as KEDA `cpu` triggers (metricType Utilization,
  containerName = the app). KEDA creates and owns the HPA itself, named after ours through
  `advanced.horizontalPodAutoscalerConfig.name` and given our behavior, so a Deployment never has
  two HPAs (two would fight over its replica count). KEDA needs minReplicaCount >= 1 here (it is).

Conventions of interstate's Kubernetes mode that these rely on: each workload runs as an
`apps/v1` Deployment of its name, whose app container has the workload's name and whose pods
carry the label `app: <workload>` (as the chapter's Deployment does).

The request rate is Envoy's own counter on the side-cars' inbound listener, scraped by Prometheus
from each side-car's admin `/stats/prometheus`:

    sum(rate(envoy_http_downstream_rq_total{app="results",
        envoy_http_conn_manager_prefix=~"inbound|inbound_plaintext"}[1m]))

`envoy_http_conn_manager_prefix` is the stat prefix of the HTTP connection manager (`inbound`
for mutual TLS, `inbound_plaintext` for what PERMISSIVE mode also accepts; `outbound` and
`admin` are left out). `app` is the pod label, which the Prometheus scrape config must copy onto
the series (the usual `kubernetes_sd_configs` relabeling of `__meta_kubernetes_pod_label_app`);
with a namespace, `namespace="..."` is matched too. The query sums over all replicas; KEDA's
default metricType AverageValue divides by the replica count, so the threshold is the target per
replica (100 -> `threshold: "100"`).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from interstate.model.autoscaler import CpuUtilization, HorizontalPodAutoscaler, RequestRate
from interstate.model.index import MeshConfig
from interstate.model.workload import parse_quantity

DEFAULT_PROMETHEUS = "http://prometheus.monitoring.svc:9090"
RATE_WINDOW = "1m"  # four scrapes at Prometheus' usual 15 s interval
REQUEST_COUNTER = "envoy_http_downstream_rq_total"
INBOUND_PREFIXES = ("inbound", "inbound_plaintext")  # compile.names.INBOUND_LISTENER (+ plaintext)
MANAGED_BY = {"app.kubernetes.io/managed-by": "interstate"}
TARGET_REF_API_VERSION = "apps/v1"
TARGET_REF_KIND = "Deployment"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def manifests(
    config: MeshConfig, *, prometheus: str = DEFAULT_PROMETHEUS, namespace: str | None = None
) -> list[dict[str, Any]]:
    """One Kubernetes object per HorizontalPodAutoscaler of the mesh, in file order. ValueError
    when `namespace` is not a valid namespace name."""
    if namespace is not None and not _NAMESPACE.match(namespace):
        raise ValueError(f"{namespace!r} is not a namespace name; use lower-case letters, digits and '-', at most 63")
    return [
        autoscaler(hpa, prometheus=prometheus, namespace=namespace) for hpa in config.of_kind(HorizontalPodAutoscaler)
    ]


def autoscaler(
    hpa: HorizontalPodAutoscaler, *, prometheus: str = DEFAULT_PROMETHEUS, namespace: str | None = None
) -> dict[str, Any]:
    """A ScaledObject when `hpa` has a request-rate metric, else a native HorizontalPodAutoscaler."""
    if any(isinstance(goal, RequestRate) for goal in hpa.metrics):
        return scaled_object(hpa, prometheus=prometheus, namespace=namespace)
    return horizontal_pod_autoscaler(hpa, namespace=namespace)


def horizontal_pod_autoscaler(hpa: HorizontalPodAutoscaler, *, namespace: str | None = None) -> dict[str, Any]:
    """An autoscaling/v2 HPA whose CPU metrics target the app's container only."""
    metrics: list[dict[str, Any]] = []
    for goal in hpa.metrics:
        if not isinstance(goal, CpuUtilization):
            raise ValueError(f"{hpa.ref}: a request-rate metric needs KEDA; use autoscaler() or scaled_object()")
        metrics.append(
            {
                "type": "ContainerResource",
                "containerResource": {
                    "name": "cpu",
                    "container": hpa.workload,
                    "target": {"type": "Utilization", "averageUtilization": goal.percent},
                },
            }
        )
    spec: dict[str, Any] = {
        "scaleTargetRef": _target_ref(hpa),
        "minReplicas": hpa.min_replicas,
        "maxReplicas": hpa.max_replicas,
        "metrics": metrics,
    }
    behavior = _behavior(hpa)
    if behavior:
        spec["behavior"] = behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(hpa, namespace),
        "spec": spec,
    }


def scaled_object(
    hpa: HorizontalPodAutoscaler, *, prometheus: str = DEFAULT_PROMETHEUS, namespace: str | None = None
) -> dict[str, Any]:
    """A KEDA ScaledObject: a prometheus trigger per request-rate metric, a cpu trigger per CPU one."""
    triggers: list[dict[str, Any]] = []
    for goal in hpa.metrics:
        if isinstance(goal, RequestRate):
            triggers.append(
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": prometheus,
                        "query": request_rate_query(hpa.workload, namespace),
                        "threshold": _number(parse_quantity(goal.quantity)),
                    },
                }
            )
        else:
            triggers.append(
                {
                    "type": "cpu",
                    "metricType": "Utilization",
                    "metadata": {"value": str(goal.percent), "containerName": hpa.workload},
                }
            )
    hpa_config: dict[str, Any] = {"name": hpa.name}
    behavior = _behavior(hpa)
    if behavior:
        hpa_config["behavior"] = behavior
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(hpa, namespace),
        "spec": {
            "scaleTargetRef": _target_ref(hpa),
            "minReplicaCount": hpa.min_replicas,
            "maxReplicaCount": hpa.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": hpa_config},
            "triggers": triggers,
        },
    }


def request_rate_query(workload: str, namespace: str | None = None, window: str = RATE_WINDOW) -> str:
    """PromQL: requests per second that `workload`'s side-cars receive, summed over its replicas."""
    labels = [f'app="{workload}"']
    if namespace is not None:
        labels.append(f'namespace="{namespace}"')
    labels.append(f'envoy_http_conn_manager_prefix=~"{"|".join(INBOUND_PREFIXES)}"')
    return f"sum(rate({REQUEST_COUNTER}{{{','.join(labels)}}}[{window}]))"


def _target_ref(hpa: HorizontalPodAutoscaler) -> dict[str, Any]:
    return {"apiVersion": TARGET_REF_API_VERSION, "kind": TARGET_REF_KIND, "name": hpa.workload}


def _metadata(hpa: HorizontalPodAutoscaler, namespace: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": hpa.name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = {**hpa.metadata.labels, **MANAGED_BY}
    if hpa.metadata.annotations:
        metadata["annotations"] = dict(hpa.metadata.annotations)
    return metadata


def _behavior(hpa: HorizontalPodAutoscaler) -> dict[str, Any]:
    """The behavior as written (Kubernetes fills in the rest with the same defaults we use)."""
    if hpa.spec.behavior is None:
        return {}
    dumped: dict[str, Any] = hpa.spec.behavior.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def _number(value: Decimal) -> str:
    """100 -> "100", 0.500 -> "0.5": what KEDA parses as a float."""
    return format(value.normalize(), "f")
