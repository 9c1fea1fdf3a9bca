"""The HorizontalPodAutoscaler resource: the chapter's autoscaling/v2 YAML read as written, what
standalone mode refuses and how it says so, and the values the standalone autoscaler will read.

Every error test checks file, document, resource and field, as the rest of the config tests do.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interstate.autoscale.algorithm import DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP, ScalingPolicy, ScalingRules
from interstate.config import load
from interstate.config.loader import decode_sources
from interstate.errors import ConfigError, Issue
from interstate.model import KINDS, HorizontalPodAutoscaler, Workload
from interstate.model.autoscaler import CpuUtilization, RequestRate, ScalingPolicyType, SelectPolicy
from interstate.model.workload import cpu_millicores, parse_quantity

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "election-night"
CHAPTER = ROOT.parent / "shared" / "seed" / "12_microservice_mesh___scalability_backbone_.md"
LISTINGS = ROOT / "tests" / "fixtures" / "chapter" / "listings.yaml"  # the chapter's YAML, kept here

# The chapter's HPA, character for character (section 5, "Adding Automatic Lanes").
CHAPTER_HPA = """\
# File: k8s/results-hpa.yml
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: { name: results-hpa }
spec:
  scaleTargetRef: { kind: Deployment, name: results }
  minReplicas: 2
  maxReplicas: 30
  metrics:
    - type: Resource
      resource: { name: cpu, target: { type: Utilization, averageUtilization: 70 } }
"""
RESULTS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: { name: results }
spec:
  port: 8080
  replicas: 2
  run: { command: [python, results.py] }
  resources: { requests: { cpu: 500m } }
"""
STATS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: { name: stats }
spec:
  port: 8080
  run: { command: [python, stats.py] }
"""
HPA_REF = "HorizontalPodAutoscaler results-hpa"


def mesh(hpa: str = CHAPTER_HPA, *, results: str = RESULTS, extra: str = "") -> str:
    """results (document 1), stats (2), the autoscaler (3), then `extra` documents."""
    return "---\n".join([results, STATS, hpa] + ([extra] if extra else []))


def edit(text: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def issues(text: str) -> list[Issue]:
    with pytest.raises(ConfigError) as caught:
        decode_sources({"mesh.yaml": text})
    return caught.value.issues


def only_issue(text: str) -> Issue:
    found = issues(text)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def the_hpa(text: str) -> HorizontalPodAutoscaler:
    (hpa,) = decode_sources({"mesh.yaml": text}).of_kind(HorizontalPodAutoscaler)
    return hpa


# --- what is accepted ------------------------------------------------------------------------


def test_the_chapters_hpa_is_accepted_as_written() -> None:
    hpa = the_hpa(mesh())

    assert (hpa.api_version, hpa.kind, hpa.name, hpa.ref) == (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "results-hpa",
        HPA_REF,
    )
    assert (hpa.workload, hpa.min_replicas, hpa.max_replicas) == ("results", 2, 30)
    assert hpa.metrics == (CpuUtilization(70),)


def test_the_chapter_text_is_what_these_tests_read() -> None:
    """The HPA listing these tests use is the chapter's, as kept in tests/fixtures/chapter (the
    chapter itself lives outside the repository: where it is present, the copy must match it)."""
    listings = LISTINGS.read_text(encoding="utf-8")
    assert CHAPTER_HPA in listings
    assert "kind: HorizontalPodAutoscaler" in CHAPTER_HPA
    if CHAPTER.is_file():  # a session's checkout: the copy has not drifted from the source
        source = re.findall(r"```yaml\n(.*?)```", CHAPTER.read_text(encoding="utf-8"), re.S)
        assert all(block in listings for block in source)


def test_the_hpa_is_a_kind_of_its_own_api_version() -> None:
    assert KINDS[("autoscaling/v2", "HorizontalPodAutoscaler")] is HorizontalPodAutoscaler

    issue = only_issue(mesh(edit(CHAPTER_HPA, ("autoscaling/v2", "autoscaling/v1"))))

    assert str(issue) == (
        f"mesh.yaml: document 3 ({HPA_REF}): apiVersion: 'autoscaling/v1' is not valid for "
        "HorizontalPodAutoscaler; use autoscaling/v2"
    )


def test_kubernetes_defaults_are_applied_field_by_field() -> None:
    hpa = the_hpa(mesh(edit(CHAPTER_HPA, ("  minReplicas: 2\n", ""))))

    assert hpa.min_replicas == 1
    assert hpa.scale_up == ScalingRules(
        0,
        SelectPolicy.MAX,
        (ScalingPolicy(ScalingPolicyType.PODS, 4, 15), ScalingPolicy(ScalingPolicyType.PERCENT, 100, 15)),
    )
    assert hpa.scale_down == ScalingRules(300, SelectPolicy.MAX, (ScalingPolicy(ScalingPolicyType.PERCENT, 100, 15),))
    assert (hpa.scale_up, hpa.scale_down) == (DEFAULT_SCALE_UP, DEFAULT_SCALE_DOWN)

    partial = the_hpa(
        mesh(
            CHAPTER_HPA
            + "  behavior:\n"
            + "    scaleDown: { stabilizationWindowSeconds: 60 }\n"
            + "    scaleUp:\n"
            + "      selectPolicy: Min\n"
            + "      policies: [{ type: Pods, value: 2, periodSeconds: 30 }]\n"
        )
    )
    assert partial.scale_down == ScalingRules(60, SelectPolicy.MAX, DEFAULT_SCALE_DOWN.policies)
    assert partial.scale_up == ScalingRules(0, SelectPolicy.MIN, (ScalingPolicy(ScalingPolicyType.PODS, 2, 30),))


def test_scaling_gathers_everything_the_autoscaler_reads() -> None:
    hpa = the_hpa(
        mesh(
            CHAPTER_HPA
            + "    - type: ContainerResource\n"
            + "      containerResource: { name: cpu, container: results, target: { type: Utilization, averageUtilization: 50 } }\n"
            + "    - type: Pods\n"
            + "      pods: { metric: { name: http_requests_per_second }, target: { type: AverageValue, averageValue: 500m } }\n"
            + "  behavior: { scaleDown: { selectPolicy: Disabled } }\n"
        )
    )

    scaling = hpa.scaling()

    assert (scaling.workload, scaling.min_replicas, scaling.max_replicas) == ("results", 2, 30)
    assert scaling.metrics == (
        CpuUtilization(70),
        CpuUtilization(50, "results"),
        RequestRate(0.5, "http_requests_per_second", "500m"),
    )
    assert scaling.scale_up == DEFAULT_SCALE_UP
    assert scaling.scale_down.select_policy == SelectPolicy.DISABLED


@pytest.mark.parametrize(("written", "per_replica"), [('"100"', 100.0), ("100", 100.0), ('"500m"', 0.5), ("2.5", 2.5)])
def test_a_request_rate_target_is_a_quantity_string_or_a_number(written: str, per_replica: float) -> None:
    hpa = the_hpa(
        mesh(
            edit(
                CHAPTER_HPA,
                (
                    "    - type: Resource\n      resource: { name: cpu, target: { type: Utilization, averageUtilization: 70 } }\n",
                    "    - type: Pods\n      pods:\n        metric: { name: requests_per_second }\n"
                    f"        target: {{ type: AverageValue, averageValue: {written} }}\n",
                ),
            )
        )
    )

    (goal,) = hpa.metrics
    assert isinstance(goal, RequestRate)
    assert goal.per_replica == per_replica


def test_no_metrics_means_kubernetes_default_cpu_80_percent() -> None:
    hpa = the_hpa(mesh(CHAPTER_HPA.split("  metrics:\n")[0]))

    assert hpa.metrics == (CpuUtilization(80),)


@pytest.mark.parametrize(
    "target_ref",
    [
        "{ apiVersion: apps/v1, kind: Deployment, name: results }",
        "{ kind: Workload, name: results }",
        "{ apiVersion: mesh.codifyhq.io/v1, kind: Workload, name: results }",
    ],
)
def test_the_target_is_a_deployment_or_a_workload_by_name(target_ref: str) -> None:
    hpa = the_hpa(mesh(edit(CHAPTER_HPA, ("{ kind: Deployment, name: results }", target_ref))))

    assert hpa.workload == "results"


def test_the_example_autoscales_results_on_cpu_and_request_rate() -> None:
    config = load(EXAMPLE)

    (hpa,) = config.of_kind(HorizontalPodAutoscaler)
    assert (hpa.workload, hpa.min_replicas, hpa.max_replicas) == ("results", 2, 30)
    assert hpa.metrics == (CpuUtilization(70), RequestRate(100.0, "requests_per_second", "100"))
    (results,) = [w for w in config.of_kind(Workload) if w.name == "results"]
    assert results.spec.resources.requests.cpu_millicores == 500
    assert config.origin(hpa) == (str(EXAMPLE / "results-autoscale.yaml"), 1)


# --- what is refused, and how it reads ---------------------------------------------------------

CPU_METRIC = (
    "    - type: Resource\n      resource: { name: cpu, target: { type: Utilization, averageUtilization: 70 } }\n"
)


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        ("minReplicas: 2", "minReplicas: 0", "spec.minReplicas", "greater than or equal to 1"),
        ("maxReplicas: 30", "maxReplicas: 1", "spec.maxReplicas", "1 is less than minReplicas (2)"),
        ("maxReplicas: 30", "maxReplicas: '30'", "spec.maxReplicas", "valid integer"),
        ("  maxReplicas: 30\n", "", "spec.maxReplicas", "required field is missing"),
        ("name: results }", "name: Results }", "spec.scaleTargetRef.name", "is not a valid name"),
        (
            "name: results }",
            "name: resultz }",
            "spec.scaleTargetRef.name",
            "unknown service 'resultz'; known: results, stats",
        ),
        (
            "kind: Deployment",
            "kind: StatefulSet",
            "spec.scaleTargetRef.kind",
            "use Deployment (as on Kubernetes) or Workload",
        ),
        (
            "{ kind: Deployment",
            "{ apiVersion: apps/v2, kind: Deployment",
            "spec.scaleTargetRef.apiVersion",
            "'apps/v2' does not go with kind Deployment; use apps/v1",
        ),
        (
            "averageUtilization: 70",
            "averageUtilization: 0",
            "spec.metrics[0].resource.target.averageUtilization",
            "greater than or equal to 1",
        ),
        (
            "averageUtilization: 70",
            "averageValue: 500m",
            "spec.metrics[0].resource.target.averageUtilization",
            "required when type is Utilization",
        ),
        (
            "type: Utilization",
            "type: Percent",
            "spec.metrics[0].resource.target.type",
            "'Utilization', 'Value' or 'AverageValue'",
        ),
        (
            "type: Utilization, averageUtilization: 70",
            "type: AverageValue, averageValue: 500m",
            "spec.metrics[0].resource.target.type",
            "AverageValue is not supported for cpu; use Utilization",
        ),
        (
            "averageUtilization: 70 }",
            "averageUtilization: 70, averageValue: 1 }",
            "spec.metrics[0].resource.target.averageValue",
            "does not go with type Utilization",
        ),
        (
            "resource: { name: cpu",
            "resource: { nme: cpu",
            "spec.metrics[0].resource.nme",
            "unknown field; valid fields here: name, target",
        ),
        ("- type: Resource", "- type: Pods", "spec.metrics[0].pods", "required when type is Pods"),
    ],
)
def test_a_bad_field_is_named_with_file_document_and_field(old: str, new: str, field: str, message: str) -> None:
    found = issues(mesh(edit(CHAPTER_HPA, (old, new))))

    assert any(
        (i.file, i.document, i.resource, i.field) == ("mesh.yaml", 3, HPA_REF, field) and message in i.message
        for i in found
    ), "\n".join(map(str, found))


@pytest.mark.parametrize(
    ("behavior", "field", "message"),
    [
        (
            "scaleUp: { stabilizationWindowSeconds: 3601 }",
            "spec.behavior.scaleUp.stabilizationWindowSeconds",
            "less than or equal to 3600",
        ),
        (
            "scaleDown: { stabilizationWindowSeconds: -1 }",
            "spec.behavior.scaleDown.stabilizationWindowSeconds",
            "greater than or equal to 0",
        ),
        ("scaleDown: { selectPolicy: max }", "spec.behavior.scaleDown.selectPolicy", "'Max', 'Min' or 'Disabled'"),
        ("scaleUp: { policies: [] }", "spec.behavior.scaleUp.policies", "give at least one policy"),
        (
            "scaleUp: { policies: [{ type: Pods, value: 4, periodSeconds: 1801 }] }",
            "spec.behavior.scaleUp.policies[0].periodSeconds",
            "less than or equal to 1800",
        ),
        (
            "scaleUp: { policies: [{ type: Pods, value: 4, periodSeconds: 0 }] }",
            "spec.behavior.scaleUp.policies[0].periodSeconds",
            "greater than or equal to 1",
        ),
        (
            "scaleUp: { policies: [{ type: Pods, value: 0, periodSeconds: 15 }] }",
            "spec.behavior.scaleUp.policies[0].value",
            "greater than or equal to 1",
        ),
        (
            "scaleUp: { policies: [{ type: Replicas, value: 4, periodSeconds: 15 }] }",
            "spec.behavior.scaleUp.policies[0].type",
            "'Pods' or 'Percent'",
        ),
        (
            "scaleUp: { policies: [{ type: Pods, value: 4 }] }",
            "spec.behavior.scaleUp.policies[0].periodSeconds",
            "required field is missing",
        ),
        ("scaleSideways: {}", "spec.behavior.scaleSideways", "unknown field; valid fields here: scaleDown, scaleUp"),
    ],
)
def test_a_bad_behavior_is_named_with_its_field(behavior: str, field: str, message: str) -> None:
    issue = only_issue(mesh(CHAPTER_HPA + f"  behavior: {{ {behavior} }}\n"))

    assert (issue.file, issue.document, issue.resource, issue.field) == ("mesh.yaml", 3, HPA_REF, field)
    assert message in issue.message


@pytest.mark.parametrize(
    ("metric", "field", "message"),
    [
        (
            "- type: External\n      external: { metric: { name: queue_depth }, target: { type: Value, value: 10 } }",
            "spec.metrics[0].type",
            "External metrics are not supported; standalone mode supports",
        ),
        (
            "- type: Object\n      object: { metric: { name: hits }, target: { type: Value, value: 10 } }",
            "spec.metrics[0].type",
            "Object metrics are not supported; standalone mode supports",
        ),
        ("- type: Magic", "spec.metrics[0].type", "'Magic' is not a metric type; standalone mode supports"),
        (
            "- type: Resource\n      resource: { name: memory, target: { type: Utilization, averageUtilization: 70 } }",
            "spec.metrics[0].resource.name",
            "'memory' is not supported; standalone mode supports",
        ),
        (
            "- type: Pods\n      pods: { metric: { name: queue_depth }, target: { type: AverageValue, averageValue: 1 } }",
            "spec.metrics[0].pods.metric.name",
            "'queue_depth' is not supported; standalone mode supports",
        ),
        (
            "- type: Pods\n      pods: { metric: { name: requests_per_second }, target: { type: Value, value: 1 } }",
            "spec.metrics[0].pods.target.type",
            "Value is not supported for requests_per_second; use AverageValue",
        ),
        (
            "- type: Pods\n      pods: { metric: { name: requests_per_second, selector: { matchLabels: { a: b } } }, "
            "target: { type: AverageValue, averageValue: 1 } }",
            "spec.metrics[0].pods.metric.selector",
            "not supported in standalone mode",
        ),
        (
            "- type: Pods\n      pods: { metric: { name: requests_per_second }, target: { type: AverageValue, averageValue: 1x } }",
            "spec.metrics[0].pods.target.averageValue",
            "'1x' is not a quantity",
        ),
        (
            "- type: Pods\n      pods: { metric: { name: requests_per_second }, target: { type: AverageValue, averageValue: 0 } }",
            "spec.metrics[0].pods.target.averageValue",
            "must be positive",
        ),
        (
            "- type: ContainerResource\n      containerResource: { name: cpu, container: envoy, "
            "target: { type: Utilization, averageUtilization: 70 } }",
            "spec.metrics[0].containerResource.container",
            "'envoy' is not the app's container; interstate names it after the workload: 'results'",
        ),
    ],
)
def test_what_standalone_mode_cannot_measure_is_refused_saying_what_it_can(
    metric: str, field: str, message: str
) -> None:
    issue = only_issue(mesh(edit(CHAPTER_HPA, (CPU_METRIC, f"    {metric}\n"))))

    assert (issue.file, issue.document, issue.resource, issue.field) == ("mesh.yaml", 3, HPA_REF, field)
    assert message in issue.message
    if "standalone mode supports" in message:
        assert "Resource or ContainerResource with name cpu" in issue.message
        assert "Pods with metric name requests_per_second" in issue.message


NO_CPU_REQUEST = edit(RESULTS, ("  resources: { requests: { cpu: 500m } }\n", ""))
NEEDS_REQUEST = re.compile(
    r"CPU utilization is a percentage of the workload's CPU request, and Workload results has none; "
    r'give it spec.resources.requests.cpu \(e.g. "500m"\)$'
)


def test_a_cpu_metric_needs_the_workloads_cpu_request() -> None:
    issue = only_issue(mesh(results=NO_CPU_REQUEST))

    assert (issue.file, issue.document, issue.resource, issue.field) == (
        "mesh.yaml",
        3,
        HPA_REF,
        "spec.metrics[0].resource",
    )
    assert NEEDS_REQUEST.search(issue.message), issue.message


def test_a_container_cpu_metric_and_the_default_metric_need_it_too() -> None:
    container = edit(
        CHAPTER_HPA,
        (
            "type: Resource\n      resource: { name: cpu,",
            "type: ContainerResource\n      containerResource: { name: cpu, container: results,",
        ),
    )
    issue = only_issue(mesh(container, results=NO_CPU_REQUEST))
    assert issue.field == "spec.metrics[0].containerResource"

    issue = only_issue(mesh(CHAPTER_HPA.split("  metrics:\n")[0], results=NO_CPU_REQUEST))
    assert issue.field == "spec.metrics"
    assert issue.message.startswith("none given, so Kubernetes' default applies (CPU at 80%)")


def test_a_request_rate_alone_needs_no_cpu_request() -> None:
    rate = edit(
        CHAPTER_HPA,
        (
            CPU_METRIC,
            "    - type: Pods\n      pods: { metric: { name: requests_per_second }, target: { type: AverageValue, averageValue: 100 } }\n",
        ),
    )

    assert the_hpa(mesh(rate, results=NO_CPU_REQUEST)).metrics == (RequestRate(100.0, "requests_per_second", "100"),)


def test_one_autoscaler_per_workload() -> None:
    second = edit(CHAPTER_HPA, ("{ name: results-hpa }", "{ name: results-hpa-2 }"))

    issue = only_issue(mesh(extra=second))

    assert str(issue) == (
        "mesh.yaml: document 4 (HorizontalPodAutoscaler results-hpa-2): spec.scaleTargetRef.name: conflicts with "
        f"{HPA_REF} (mesh.yaml document 3): both define the autoscaler of workload 'results'"
    )


def test_two_workloads_may_each_have_one() -> None:
    stats_hpa = edit(
        CHAPTER_HPA, ("{ name: results-hpa }", "{ name: stats-hpa }"), ("name: results }", "name: stats }")
    )
    stats = edit(STATS, ("  run:", "  resources: { requests: { cpu: 1 } }\n  run:"))

    config = decode_sources({"mesh.yaml": "---\n".join([RESULTS, stats, CHAPTER_HPA, stats_hpa])})

    assert [h.workload for h in config.of_kind(HorizontalPodAutoscaler)] == ["results", "stats"]


# --- the workload's CPU request ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "millicores"),
    [("500m", 500), ('"1"', 1000), ("1", 1000), ("0.5", 500), ("2", 2000), ("0.1m", 1), ('"1.5"', 1500), ("1e-1", 100)],
)
def test_a_cpu_request_is_a_kubernetes_quantity(written: str, millicores: int) -> None:
    text = edit(RESULTS, ("cpu: 500m", f"cpu: {written}"))

    (results,) = decode_sources({"mesh.yaml": text}).of_kind(Workload)

    assert results.spec.resources.requests.cpu_millicores == millicores


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("500x", "'500x' is not a quantity; write a Kubernetes quantity, e.g. 500m, 0.5, 1, 100"),
        ("-1", "-1 must be more than 0"),
        ("0", "0 must be more than 0"),
        ("true", "True is not a quantity"),
        ("''", "'' is not a quantity"),
        ("1e999", "'1e999' is too large"),
        ("2000000", "is too large; at most 1000000 cores"),
    ],
)
def test_a_bad_cpu_request_is_named_with_its_field(written: str, message: str) -> None:
    issue = only_issue(edit(RESULTS, ("cpu: 500m", f"cpu: {written}")))

    assert (issue.document, issue.resource, issue.field) == (1, "Workload results", "spec.resources.requests.cpu")
    assert message in issue.message


def test_only_a_cpu_request_is_known_so_far() -> None:
    issue = only_issue(edit(RESULTS, ("cpu: 500m", "memory: 1Gi")))

    assert (issue.field, issue.message) == ("spec.resources.requests.memory", "unknown field; valid fields here: cpu")


@given(st.integers(min_value=1, max_value=10**9))
def test_millicores_read_back_as_written(millicores: int) -> None:
    assert cpu_millicores(f"{millicores}m") == millicores
    assert cpu_millicores(f"{millicores / 1000}") == millicores


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1k", Decimal(1000)),
        ("1Ki", Decimal(1024)),
        ("2Mi", Decimal(2 * 1024**2)),
        ("1E", Decimal(10**18)),
        ("1e3", Decimal(1000)),
        ("+.5", Decimal("0.5")),
        ("250u", Decimal("0.00025")),
    ],
)
def test_quantities_read_like_kubernetes_writes_them(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value
