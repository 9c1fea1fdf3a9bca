"""Kubernetes output for autoscaling: `interstate manifests autoscale` and kube/autoscale.py.

There is no kube-apiserver here, so the objects are checked against the official schemas: the
HorizontalPodAutoscaler with kubernetes-validate (Kubernetes' own OpenAPI, strict: unknown fields
refused), the ScaledObject with jsonschema against KEDA's CRD (tests/fixtures/keda/, made strict
the same way, as the API server's strict field validation is). Negative tests prove both bite.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from interstate.cli import main
from interstate.config import load
from interstate.config.loader import decode_sources
from interstate.kube import autoscale, install
from interstate.model import HorizontalPodAutoscaler
from interstate.model.index import MeshConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "election-night"
KEDA_CRD = Path(__file__).parent / "fixtures" / "keda" / "keda.sh_scaledobjects.yaml"
KUBERNETES = "1.37.0"  # the newest schemas kubernetes-validate 1.37.0 bundles

RESULTS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: { name: results }
spec:
  port: 8080
  run: { command: [python, results.py] }
  resources: { requests: { cpu: 500m } }
"""
CPU_HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: { name: results-hpa, labels: { team: fec } }
spec:
  scaleTargetRef: { kind: Deployment, name: results }
  minReplicas: 2
  maxReplicas: 30
  metrics:
    - type: Resource
      resource: { name: cpu, target: { type: Utilization, averageUtilization: 70 } }
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 120
      policies: [{ type: Pods, value: 1, periodSeconds: 60 }]
    scaleUp: { selectPolicy: Max }
"""
RATE_METRIC = """\
    - type: Pods
      pods:
        metric: { name: requests_per_second }
        target: { type: AverageValue, averageValue: "100" }
"""
CPU_AND_RATE_HPA = CPU_HPA.replace("  behavior:\n", RATE_METRIC + "  behavior:\n")
QUERY = (
    'sum(rate(envoy_http_downstream_rq_total{app="results",'
    'envoy_http_conn_manager_prefix=~"inbound|inbound_plaintext"}[1m]))'
)


def config_of(hpa: str) -> MeshConfig:
    return decode_sources({"mesh.yaml": RESULTS + "---\n" + hpa})


def only_object(hpa: str, **options: Any) -> dict[str, Any]:
    (obj,) = autoscale.manifests(config_of(hpa), **options)
    return obj


def validate_hpa(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@cache
def scaled_object_schema() -> dict[str, Any]:
    crd = yaml.safe_load(KEDA_CRD.read_text(encoding="utf-8"))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _strict(version["schema"]["openAPIV3Schema"])


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever it lists the fields (not under
    `metadata`, `type: object` alone, which Kubernetes checks itself)."""
    out = copy.deepcopy(schema)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    for name, sub in out.get("properties", {}).items():
        out["properties"][name] = _strict(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    return out


def validate_scaled_object(obj: dict[str, Any]) -> None:
    assert (obj["apiVersion"], obj["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    jsonschema.validate(obj, scaled_object_schema(), cls=jsonschema.Draft7Validator)


# --- CPU only: a native HPA on the app's container --------------------------------------------------


def test_a_cpu_autoscaler_becomes_an_hpa_on_the_app_container() -> None:
    hpa = only_object(CPU_HPA)

    validate_hpa(hpa)
    assert hpa == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "results-hpa", "labels": {"team": "fec", "app.kubernetes.io/managed-by": "interstate"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "results"},
            "minReplicas": 2,
            "maxReplicas": 30,
            "metrics": [
                {
                    "type": "ContainerResource",
                    "containerResource": {
                        "name": "cpu",
                        "container": "results",  # the app, not its side-car
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 120,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                },
                "scaleUp": {"selectPolicy": "Max"},
            },
        },
    }


def test_the_kubernetes_default_metric_is_written_out_for_the_app_container() -> None:
    hpa = only_object(CPU_HPA.split("  metrics:\n")[0], namespace="elections")

    validate_hpa(hpa)
    assert hpa["metadata"]["namespace"] == "elections"
    assert [m["containerResource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]] == [80]
    assert "behavior" not in hpa["spec"]


def test_a_container_cpu_metric_stays_on_the_app_container() -> None:
    container = CPU_HPA.replace(
        "type: Resource\n      resource: { name: cpu,",
        "type: ContainerResource\n      containerResource: { name: cpu, container: results,",
    )

    hpa = only_object(container)

    validate_hpa(hpa)
    assert hpa["spec"]["metrics"][0]["containerResource"]["container"] == "results"


def test_hpa_validation_bites() -> None:
    good = only_object(CPU_HPA)
    validate_hpa(good)

    broken: list[dict[str, Any]] = []
    for path, value in [
        (("spec", "maxReplicas"), "30"),  # a string where an integer goes
        (("spec", "metrics", 0, "containerResource", "target", "averageUtilization"), "70%"),
        (("spec", "scaleTargetRef", "name"), None),  # required
        (("spec", "minReplica"), 2),  # no such field
    ]:
        bad = copy.deepcopy(good)
        *parents, last = path
        node: Any = bad
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
        broken.append(bad)
    for bad in broken:
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_hpa(bad)


# --- a request rate: a KEDA ScaledObject, and no HPA of ours ----------------------------------------


def test_the_example_becomes_one_scaled_object_with_both_triggers() -> None:
    objects = autoscale.manifests(load(EXAMPLE))

    (obj,) = objects  # KEDA makes the HPA: there is never a second one on the Deployment
    validate_scaled_object(obj)
    assert obj["metadata"]["name"] == "results-hpa"
    spec = obj["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "results"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 30)
    assert spec["advanced"] == {"horizontalPodAutoscalerConfig": {"name": "results-hpa"}}
    assert spec["triggers"] == [
        {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70", "containerName": "results"}},
        {
            "type": "prometheus",
            "metricType": "AverageValue",
            "metadata": {"serverAddress": autoscale.DEFAULT_PROMETHEUS, "query": QUERY, "threshold": "100"},
        },
    ]


def test_a_request_rate_alone_is_one_prometheus_trigger_with_the_behavior() -> None:
    rate_only = CPU_HPA.replace(
        "    - type: Resource\n      resource: { name: cpu, target: { type: Utilization, averageUtilization: 70 } }\n",
        RATE_METRIC.replace('"100"', "500m"),
    )

    obj = only_object(rate_only, prometheus="http://prom.example:9090", namespace="elections")

    validate_scaled_object(obj)
    (trigger,) = obj["spec"]["triggers"]
    assert trigger["metadata"] == {
        "serverAddress": "http://prom.example:9090",
        "query": QUERY.replace('app="results",', 'app="results",namespace="elections",'),
        "threshold": "0.5",  # 500m requests per second per replica, as KEDA parses a float
    }
    config = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert config["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 120,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
    }
    assert obj["metadata"]["namespace"] == "elections"


def test_scaled_object_validation_bites() -> None:
    good = only_object(CPU_AND_RATE_HPA)
    validate_scaled_object(good)

    missing = copy.deepcopy(good)
    del missing["spec"]["triggers"]
    not_a_string = copy.deepcopy(good)
    not_a_string["spec"]["triggers"][0]["metadata"]["value"] = 70  # KEDA's metadata values are strings
    misspelt = copy.deepcopy(good)
    misspelt["spec"]["minReplicas"] = misspelt["spec"].pop("minReplicaCount")
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["maxReplicaCount"] = "30"
    for bad in (missing, not_a_string, misspelt, wrong_type):
        with pytest.raises(jsonschema.ValidationError):
            validate_scaled_object(bad)


def test_the_fixture_is_the_crd_it_says_it_is() -> None:
    text = KEDA_CRD.read_text(encoding="utf-8")
    assert "kedacore/keda" in text and "Apache License 2.0" in text
    crd = yaml.safe_load(text)
    assert (crd["kind"], crd["metadata"]["name"]) == ("CustomResourceDefinition", "scaledobjects.keda.sh")
    props = scaled_object_schema()["properties"]["spec"]["properties"]
    assert {"scaleTargetRef", "triggers", "minReplicaCount", "advanced"} <= set(props)


def test_the_query_reads_the_side_cars_inbound_request_counter() -> None:
    assert autoscale.request_rate_query("results") == QUERY
    assert autoscale.request_rate_query("stats", "ns1", "2m") == (
        'sum(rate(envoy_http_downstream_rq_total{app="stats",namespace="ns1",'
        'envoy_http_conn_manager_prefix=~"inbound|inbound_plaintext"}[2m]))'
    )


def test_an_hpa_is_refused_a_request_rate_it_cannot_carry() -> None:
    (hpa,) = config_of(CPU_AND_RATE_HPA).of_kind(HorizontalPodAutoscaler)

    with pytest.raises(ValueError, match="needs KEDA"):
        autoscale.horizontal_pod_autoscaler(hpa)


# --- the command ----------------------------------------------------------------------------------


def test_the_command_prints_every_object_as_yaml(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "---\n".join(
            [
                RESULTS,
                RESULTS.replace("name: results", "name: stats"),
                CPU_HPA,
                CPU_AND_RATE_HPA.replace("name: results-hpa", "name: stats-hpa").replace(
                    "name: results }", "name: stats }"
                ),
            ]
        )
    )

    result = CliRunner().invoke(main, ["manifests", "autoscale", str(tmp_path), "--namespace", "elections"])

    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.stdout))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("HorizontalPodAutoscaler", "results-hpa"),
        ("ScaledObject", "stats-hpa"),
    ]
    assert objects == autoscale.manifests(load(tmp_path), namespace="elections")
    validate_hpa(objects[0])
    validate_scaled_object(objects[1])


def test_the_command_validates_first_and_says_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        RESULTS.replace("  resources: { requests: { cpu: 500m } }\n", "") + "---\n" + CPU_HPA
    )

    result = CliRunner().invoke(main, ["manifests", "autoscale", str(tmp_path)])

    assert result.exit_code == 1
    assert (
        "document 2 (HorizontalPodAutoscaler results-hpa): spec.metrics[0].resource: CPU utilization" in result.stderr
    )
    assert result.stdout == ""


def test_the_command_refuses_a_bad_namespace_and_notes_an_empty_mesh(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(RESULTS)

    empty = CliRunner().invoke(main, ["manifests", "autoscale", str(tmp_path)])
    bad = CliRunner().invoke(main, ["manifests", "autoscale", str(tmp_path), "--namespace", "Not_OK"])

    assert (empty.exit_code, empty.stdout) == (0, "")
    assert "no HorizontalPodAutoscaler" in empty.stderr
    assert bad.exit_code == 2
    assert "--namespace: 'Not_OK' is not a namespace name" in bad.stderr


def test_the_install_manifests_are_valid_kubernetes_objects_with_least_privilege_rbac() -> None:
    """`interstate manifests install`: every object passes Kubernetes' own schemas (strict); the
    controller's ClusterRole grants reads, status patches and TokenReview creation only, never a
    wildcard. (The
    real API server accepts them whole: tests/test_e2e_kube_real.py.)"""
    objects = install.manifests("interstate-system")
    for obj in objects:
        if obj["kind"] != "CustomResourceDefinition":
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    [role] = [o for o in objects if o["kind"] == "ClusterRole"]
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs == {"list", "watch", "patch", "create"}
    [patches] = [rule for rule in role["rules"] if "patch" in rule["verbs"]]
    assert patches["verbs"] == ["patch"] and all(r.endswith("/status") for r in patches["resources"])
    assert all("*" not in rule["resources"] and "*" not in rule["apiGroups"] for rule in role["rules"])
    [creates] = [rule for rule in role["rules"] if "create" in rule["verbs"]]
    assert creates == {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    [lease_role] = [o for o in objects if o["kind"] == "Role"]  # namespaced: its own Lease only
    assert lease_role["metadata"]["namespace"] == "interstate-system"
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},  # the mesh CA's, there only
    ]
    kinds = [o["kind"] for o in objects]
    assert kinds.index("Namespace") < kinds.index("ServiceAccount")  # in the order to apply


def test_the_install_command_prints_them() -> None:
    result = CliRunner().invoke(main, ["manifests", "install", "--namespace", "mesh-system"])
    assert result.exit_code == 0, result.output
    printed = list(yaml.safe_load_all(result.output))
    assert printed == install.manifests("mesh-system")
