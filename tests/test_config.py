"""Loading and validating mesh files: what a user sees for a good mesh and for each mistake.

Every error test checks that the issue names the file, the document, the resource and the field,
and says what would be valid; the whole list is reported at once, never just the first.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from interstate.config import load
from interstate.config.loader import decode_sources
from interstate.errors import ConfigError, Issue
from interstate.model import Gateway, Mesh, TrafficPolicy, Workload
from interstate.model.base import Duration
from interstate.model.index import MeshConfig, MeshIndex

MESH = """\
apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata:
  name: election-night
spec:
  defaultPolicy: FEC-F101
"""
RESULTS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata:
  name: results
  annotations:
    mesh.codifyhq.io/inject: "enabled"
    mesh.codifyhq.io/policy: "FEC-F101"
spec:
  port: 8080
  replicas: 2
  run:
    command: [python, apps/results.py]
  calls: [stats]
"""
STATS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata:
  name: stats
spec:
  port: 8080
  replicas: 1
  run:
    command: [python, apps/stats.py]
"""
GATEWAY = """\
apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata:
  name: public
spec:
  routes:
    - pathPrefix: /results
      service: results
"""
BREAKER = """\
apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata:
  name: stats-breaker
spec:
  destination:
    service: stats
  outlierDetection:
    consecutiveErrors: 3
    baseEjectionTime: 30s
"""
DOCS = [MESH, RESULTS, STATS, GATEWAY, BREAKER]  # documents 1..5 of mesh.yaml
ELECTION_NIGHT = "---\n".join(DOCS)

KNOWN_KINDS = "AccessPolicy (mesh.codifyhq.io/v1), ExternalService (mesh.codifyhq.io/v1), Gateway (mesh.codifyhq.io/v1)"


def mesh_yaml(*replacements: tuple[str, str], extra: str = "") -> str:
    """The election-night mesh with `old -> new` replacements (each must apply) and more docs."""
    text = ELECTION_NIGHT
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text + ("---\n" + extra if extra else "")


def issues(sources: dict[str, str] | str) -> list[Issue]:
    if isinstance(sources, str):
        sources = {"mesh.yaml": sources}
    with pytest.raises(ConfigError) as caught:
        decode_sources(sources)
    assert caught.value.issues, "a ConfigError must carry its issues"
    assert str(caught.value) == "\n".join(str(i) for i in caught.value.issues)
    return caught.value.issues


def only_issue(sources: dict[str, str] | str) -> Issue:
    found = issues(sources)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


# --- the valid mesh -------------------------------------------------------------------------


def test_the_election_night_mesh_loads_as_written() -> None:
    config = decode_sources({"mesh.yaml": ELECTION_NIGHT})

    assert [r.ref for r in config.resources] == [
        "Mesh election-night",
        "Workload results",
        "Workload stats",
        "Gateway public",
        "TrafficPolicy stats-breaker",
    ]
    (mesh,) = config.of_kind(Mesh)
    assert mesh.spec.default_policy == "FEC-F101"
    assert mesh.spec.policy_header == "x-policy-ctx"
    results, stats = config.of_kind(Workload)
    assert results.metadata.annotations == {
        "mesh.codifyhq.io/inject": "enabled",
        "mesh.codifyhq.io/policy": "FEC-F101",
    }
    assert results.injected and results.policy == "FEC-F101"
    assert (results.spec.port, results.spec.replicas, results.spec.calls) == (8080, 2, ["stats"])
    assert (stats.spec.replicas, stats.spec.calls, stats.policy) == (1, [], None)
    (gateway,) = config.of_kind(Gateway)
    assert [(r.path_prefix, r.service) for r in gateway.spec.routes] == [("/results", "results")]
    (policy,) = config.of_kind(TrafficPolicy)
    assert policy.spec.destination.service == "stats"
    assert policy.spec.outlier_detection is not None
    assert policy.spec.outlier_detection.consecutive_errors == 3
    assert policy.spec.outlier_detection.base_ejection_time == timedelta(seconds=30)
    assert policy.spec.outlier_detection.max_ejection_percent == 100  # fast fail by default


def test_the_index_answers_who_gets_which_policy() -> None:
    index = MeshIndex(decode_sources({"mesh.yaml": ELECTION_NIGHT}))

    assert index.policy_for(index.workloads["results"]) == "FEC-F101"  # its annotation
    assert index.policy_for(index.workloads["stats"]) == "FEC-F101"  # the mesh default
    assert set(index.traffic_policies) == {"stats"}
    assert index.gateway is not None and index.gateway.name == "public"


def test_a_mesh_without_a_mesh_resource_gets_the_defaults() -> None:
    config = decode_sources({"mesh.yaml": RESULTS + "---\n" + STATS})
    index = MeshIndex(config)

    assert index.mesh.policy_header == "x-policy-ctx"
    assert index.mesh.default_policy is None
    assert index.policy_for(index.workloads["stats"]) is None


def test_load_reads_one_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(ELECTION_NIGHT)

    assert load(path) == decode_sources({"mesh.yaml": ELECTION_NIGHT})
    assert load(str(path)) == load(path)


def test_load_reads_every_yaml_file_of_a_folder_and_resolves_names_across_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "a-mesh.yaml").write_text(MESH)
    (tmp_path / "b-workloads.yml").write_text(RESULTS + "---\n" + STATS)
    (tmp_path / "c-gateway.yaml").write_text(GATEWAY)
    (tmp_path / "policies" / "stats.yaml").write_text(BREAKER)
    (tmp_path / "README.md").write_text("not: [a mesh file")

    config = load(tmp_path)

    assert config == decode_sources({"mesh.yaml": ELECTION_NIGHT})


def test_errors_in_several_files_name_each_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(MESH + "---\n" + RESULTS.replace("[stats]", "[stats, audit]"))
    (tmp_path / "b.yaml").write_text(STATS + "---\n" + BREAKER.replace("30s", "30x"))

    with pytest.raises(ConfigError) as caught:
        load(tmp_path)

    assert [(Path(i.file).name, i.document, i.resource, i.field) for i in caught.value.issues] == [
        ("a.yaml", 2, "Workload results", "spec.calls[1]"),
        ("b.yaml", 2, "TrafficPolicy stats-breaker", "spec.outlierDetection.baseEjectionTime"),
    ]


def test_an_empty_folder_is_an_error_not_an_empty_mesh(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")

    with pytest.raises(ConfigError) as caught:
        load(tmp_path)

    assert [str(i) for i in caught.value.issues] == [f"{tmp_path}: no *.yaml or *.yml files here"]


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "nope.yaml")

    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: no such file or folder"


# --- every issue, at once, with where and what would be valid ---------------------------------


def test_the_issue_reads_as_one_line_naming_file_document_resource_and_field() -> None:
    issue = only_issue(mesh_yaml(("baseEjectionTime: 30s", "baseEjectionTime: 30x")))

    assert str(issue) == (
        "mesh.yaml: document 5 (TrafficPolicy stats-breaker): "
        "spec.outlierDetection.baseEjectionTime: "
        "'30x' is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h"
    )


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    text = mesh_yaml(
        ("defaultPolicy: FEC-F101", "defaultPolicy: FEC F101"),
        ("calls: [stats]", "calls: [stats, audit]"),
        ("replicas: 1", "replicas: one"),
        ("service: results", "service: archive"),
        ("30s", "-5s"),
    )

    assert [(i.document, i.field) for i in issues(text)] == [
        (1, "spec.defaultPolicy"),
        (2, "spec.calls[1]"),
        (3, "spec.replicas"),
        (4, "spec.routes[0].service"),
        (5, "spec.outlierDetection.baseEjectionTime"),
    ]


@pytest.mark.parametrize(
    ("replacement", "document", "resource", "field", "unknown"),
    [
        (("calls: [stats]", "calls: [stats, audit]"), 2, "Workload results", "spec.calls[1]", "audit"),
        (("service: results", "service: resultz"), 4, "Gateway public", "spec.routes[0].service", "resultz"),
        (("service: stats", "service: statz"), 5, "TrafficPolicy stats-breaker", "spec.destination.service", "statz"),
    ],
    ids=["in calls", "in a Gateway route", "as a TrafficPolicy destination"],
)
def test_an_unknown_service_is_named_with_the_known_ones(
    replacement: tuple[str, str], document: int, resource: str, field: str, unknown: str
) -> None:
    issue = only_issue(mesh_yaml(replacement))

    assert issue == Issue(
        "mesh.yaml",
        document,
        resource,
        field,
        f"unknown service {unknown!r}; known: results, stats",
    )


def test_a_reference_when_no_workload_exists_says_so() -> None:
    issue = only_issue(MESH + "---\n" + GATEWAY)

    assert issue.field == "spec.routes[0].service"
    assert issue.message == "unknown service 'results'; no Workload is defined"


def test_an_invalid_workload_is_reported_once_not_again_where_it_is_called() -> None:
    # stats is defined but broken: its callers must not be told that stats does not exist.
    issue = only_issue(mesh_yaml(("replicas: 1", "replicas: 1\n  replica: 1")))

    assert (issue.document, issue.resource, issue.field) == (3, "Workload stats", "spec.replica")


def test_a_duplicate_name_points_at_the_first_definition() -> None:
    again = STATS.replace("port: 8080", "port: 9090")

    issue = only_issue({"a.yaml": ELECTION_NIGHT, "b.yaml": again})

    assert str(issue) == (
        "b.yaml: document 1 (Workload stats): metadata.name: "
        "duplicate Workload 'stats'; first defined in a.yaml document 3"
    )


def test_the_same_name_in_different_kinds_is_fine() -> None:
    config = decode_sources({"mesh.yaml": mesh_yaml(("name: public", "name: stats"))})

    assert {r.ref for r in config.resources} >= {"Gateway stats", "Workload stats"}


def test_a_mesh_has_at_most_one_mesh_resource() -> None:
    issue = only_issue(mesh_yaml(extra=MESH.replace("election-night", "other")))

    assert issue == Issue(
        "mesh.yaml",
        6,
        "Mesh other",
        "kind",
        "only one Mesh is allowed per mesh; another is in mesh.yaml document 1",
    )


def test_two_traffic_policies_for_one_destination_conflict() -> None:
    issue = only_issue(mesh_yaml(extra=BREAKER.replace("stats-breaker", "stats-retry")))

    assert (issue.document, issue.resource, issue.field) == (6, "TrafficPolicy stats-retry", "spec.destination.service")
    assert issue.message == (
        "conflicts with TrafficPolicy stats-breaker (mesh.yaml document 5): "
        "both define the traffic policy of service 'stats'"
    )


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("30x", "'30x' is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h"),
        ("-5s", "'-5s' is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h"),
        ("10", "10 is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h"),
        ("'10'", "'10' is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h"),
        ("1.5", "1.5 is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h"),
        ("''", "'' is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h"),
        ("25h", "'25h' is too long; at most 24h"),
        ("0s", "must be more than 0s, e.g. 30s"),  # Envoy would NACK it
    ],
)
def test_a_bad_duration_is_named_with_its_field(written: str, message: str) -> None:
    issue = only_issue(mesh_yaml(("baseEjectionTime: 30s", f"baseEjectionTime: {written}")))

    assert (issue.document, issue.field, issue.message) == (5, "spec.outlierDetection.baseEjectionTime", message)


@pytest.mark.parametrize(
    ("replacement", "field", "message"),
    [
        (
            ("port: 8080\n  replicas: 2", "port: eighty\n  replicas: 2"),
            "spec.port",
            "Input should be a valid integer (got 'eighty')",
        ),
        (
            ("port: 8080\n  replicas: 2", "port: '8080'\n  replicas: 2"),
            "spec.port",
            "Input should be a valid integer (got '8080')",
        ),
        (
            ("port: 8080\n  replicas: 2", "port: 70000\n  replicas: 2"),
            "spec.port",
            "Input should be less than or equal to 65535 (got 70000)",
        ),
        (("replicas: 2", "replicas: two"), "spec.replicas", "Input should be a valid integer (got 'two')"),
        (("calls: [stats]", "calls: stats"), "spec.calls", "Input should be a valid list (got 'stats')"),
        (("calls: [stats]", "calls: [stats, stats]"), "spec.calls", "'stats' is listed twice; list each service once"),
        (("calls: [stats]", "calls: [results]"), "spec.calls", "a workload does not call itself through the mesh"),
    ],
)
def test_a_wrong_value_in_a_workload_says_what_is_expected(
    replacement: tuple[str, str], field: str, message: str
) -> None:
    issue = only_issue(mesh_yaml(replacement))

    assert (issue.document, issue.resource, issue.field, issue.message) == (2, "Workload results", field, message)


def test_a_wrong_type_in_a_traffic_policy_is_reported() -> None:
    issue = only_issue(mesh_yaml(("consecutiveErrors: 3", "consecutiveErrors: '3'")))

    assert issue.field == "spec.outlierDetection.consecutiveErrors"
    assert issue.message == "Input should be a valid integer (got '3')"


@pytest.mark.parametrize(
    ("replacement", "document", "field", "valid"),
    [
        (("kind: Gateway\n", "kind: Gateway\nstatus: {}\n"), 4, "status", "apiVersion, kind, metadata, spec"),
        (
            ("replicas: 2", "replicas: 2\n  replica: 3"),
            2,
            "spec.replica",
            "calls, localPorts, mtls, port, protocol, readinessProbe, replicas, requirePolicy, resources, run, "
            "serviceAccount, version",
        ),
        (
            ("consecutiveErrors: 3", "consecutive5xx: 3"),
            5,
            "spec.outlierDetection.consecutive5xx",
            "baseEjectionTime, consecutiveErrors, consecutiveGatewayErrors, interval, maxEjectionPercent",
        ),
        # YAML is camelCase, as the Kubernetes CRDs are; Python's field names are not accepted.
        (
            ("consecutiveErrors: 3", "consecutive_errors: 3"),
            5,
            "spec.outlierDetection.consecutive_errors",
            "baseEjectionTime, consecutiveErrors, consecutiveGatewayErrors, interval, maxEjectionPercent",
        ),
        (
            ("  name: stats\n", "  name: stats\n  uid: 1234\n"),
            3,
            "metadata.uid",
            "annotations, labels, name, namespace",
        ),
    ],
)
def test_an_unknown_field_is_listed_with_the_valid_ones(
    replacement: tuple[str, str], document: int, field: str, valid: str
) -> None:
    issue = only_issue(mesh_yaml(replacement))

    assert (issue.document, issue.field) == (document, field)
    assert issue.message == f"unknown field; valid fields here: {valid}"


@pytest.mark.parametrize(
    ("replacement", "field", "message"),
    [
        (
            ('inject: "enabled"', 'inject: "yes"'),
            "metadata.annotations.mesh.codifyhq.io/inject",
            "'yes' is not valid; use 'enabled' or 'disabled'",
        ),
        (
            ('inject: "enabled"', 'injekt: "enabled"'),
            "metadata.annotations.mesh.codifyhq.io/injekt",
            "unknown annotation; known: mesh.codifyhq.io/inject, mesh.codifyhq.io/policy",
        ),
        (
            ('policy: "FEC-F101"', 'policy: "FEC F101"'),
            "metadata.annotations.mesh.codifyhq.io/policy",
            (
                "'FEC F101' is not a valid policy ID; use letters, digits, '.', '_' or '-', "
                "at most 64 characters, e.g. 'FEC-F101'"
            ),
        ),
    ],
    ids=["inject value", "unknown annotation", "policy ID"],
)
def test_a_bad_mesh_annotation_is_reported(replacement: tuple[str, str], field: str, message: str) -> None:
    issue = only_issue(mesh_yaml(replacement))

    assert (issue.document, issue.resource, issue.field, issue.message) == (2, "Workload results", field, message)


def test_annotations_of_other_tools_are_left_alone() -> None:
    text = mesh_yaml(('inject: "enabled"', 'inject: "enabled"\n    example.com/owner: "team-a"'))

    (results, _) = decode_sources({"mesh.yaml": text}).of_kind(Workload)

    assert results.metadata.annotations["example.com/owner"] == "team-a"


def test_a_bad_default_policy_is_reported_on_the_mesh() -> None:
    issue = only_issue(mesh_yaml(("defaultPolicy: FEC-F101", "defaultPolicy: 'FEC/F101'")))

    assert (issue.document, issue.resource, issue.field) == (1, "Mesh election-night", "spec.defaultPolicy")
    assert issue.message.startswith("'FEC/F101' is not a valid policy ID")


def test_invalid_yaml_gives_the_line() -> None:
    issue = only_issue(mesh_yaml(("replicas: 1\n", "replicas: 1\n\tversion: v2\n")))  # line 29

    assert str(issue) == (
        "mesh.yaml: not valid YAML at line 29, column 1: found a tab character that violates indentation"
    )


def test_invalid_yaml_in_one_file_does_not_hide_issues_in_another() -> None:
    found = issues({"a.yaml": "kind: [", "b.yaml": BREAKER.replace("30s", "30x")})

    assert [(i.file, i.document) for i in found] == [("a.yaml", 0), ("b.yaml", 1)]


@pytest.mark.parametrize(("document", "got"), [("- a\n- b\n", "list"), ("hello\n", "str")])
def test_a_document_that_is_not_a_mapping_is_reported(document: str, got: str) -> None:
    issue = only_issue(mesh_yaml(extra=document))

    assert str(issue) == (f"mesh.yaml: document 6: expected a mapping with apiVersion and kind, got {got}")


def test_an_unknown_kind_lists_the_known_kinds() -> None:
    issue = only_issue(mesh_yaml(extra=STATS.replace("Workload", "VirtualService")))

    assert (issue.document, issue.resource, issue.field) == (6, "VirtualService stats", "kind")
    assert issue.message.startswith("unknown kind 'VirtualService'; known kinds: " + KNOWN_KINDS)
    assert "TrafficPolicy (mesh.codifyhq.io/v1), TrafficSplit (mesh.codifyhq.io/v1), Workload" in issue.message


def test_a_missing_kind_lists_the_known_kinds() -> None:
    issue = only_issue(mesh_yaml(extra=STATS.replace("kind: Workload\n", "")))

    assert (issue.document, issue.field) == (6, "kind")
    assert issue.message.startswith("missing; known kinds: " + KNOWN_KINDS)


def test_an_unknown_api_version_says_which_is_valid() -> None:
    v2 = ("apiVersion: mesh.codifyhq.io/v1\nkind: Gateway", "apiVersion: v2\nkind: Gateway")

    issue = only_issue(mesh_yaml(v2))

    assert str(issue) == (
        "mesh.yaml: document 4 (Gateway public): apiVersion: 'v2' is not valid for Gateway; use mesh.codifyhq.io/v1"
    )


def test_empty_documents_are_skipped_but_keep_their_number() -> None:
    # document 1: Mesh, 2: empty, 3: TrafficPolicy (broken), 4: Workload, 5: Workload
    text = "---\n".join([MESH, "", BREAKER.replace("30s", "30x"), RESULTS, STATS])

    issue = only_issue(text)

    assert (issue.document, issue.resource) == (3, "TrafficPolicy stats-breaker")


def test_issues_sort_by_file_then_document() -> None:
    found = issues({"b.yaml": "kind: [", "a.yaml": "- 1\n---\n- 2\n"})

    assert [(i.file, i.document) for i in found] == [("a.yaml", 1), ("a.yaml", 2), ("b.yaml", 0)]


# --- durations ---------------------------------------------------------------------------------

DURATION = TypeAdapter(Duration)
UNITS = {
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
    "us": timedelta(microseconds=1),
}


# Up to five parts of at most 4h each: always within the 24h limit.
PART = st.sampled_from(sorted(UNITS)).flatmap(
    lambda unit: st.tuples(st.integers(0, timedelta(hours=4) // UNITS[unit]), st.just(unit))
)


@given(st.lists(PART, min_size=1, max_size=5))
@example([(1, "h"), (30, "m")])
@example([(250, "ms")])
def test_a_composed_duration_parses_to_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)

    assert DURATION.validate_python(text) == sum((n * UNITS[u] for n, u in parts), timedelta())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(milliseconds=1500)),
        ("0.25h", timedelta(minutes=15)),
        ("24h", timedelta(days=1)),
        (" 30s ", timedelta(seconds=30)),
    ],
)
def test_durations_read_like_go_and_envoy_write_them(text: str, expected: timedelta) -> None:
    assert DURATION.validate_python(text) == expected


@given(st.text(max_size=12).filter(lambda s: not any("0" <= c <= "9" for c in s)))
@example("٣٠s")  # digits of another script are not digits here
@example("s")
@example("1.s")
def test_junk_is_rejected_naming_the_value(junk: str) -> None:
    with pytest.raises(ValueError) as caught:
        DURATION.validate_python(junk)

    assert repr(junk) in str(caught.value)


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()))
def test_a_number_without_a_unit_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="is not a duration; write a number with a unit"):
        DURATION.validate_python(value)


@pytest.mark.parametrize("text", ["-5s", "5 s", "5sec", "1h-30m", "1e3s", "s5", "5", ".5s", "5.s"])
def test_near_misses_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{text!r} is not a duration")):
        DURATION.validate_python(text)


def test_more_than_a_day_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("'24h1s' is too long; at most 24h")):
        DURATION.validate_python("24h1s")


def test_a_config_is_a_plain_value() -> None:
    # Two loads of the same text compare equal and hash alike: the index relies on it.
    a = decode_sources({"mesh.yaml": ELECTION_NIGHT})
    b = decode_sources({"mesh.yaml": ELECTION_NIGHT})

    assert isinstance(a, MeshConfig) and a == b
    with pytest.raises(ValidationError, match="frozen"):
        a.of_kind(Workload)[0].spec.replicas = 5


def test_requiring_a_policy_id_in_a_mesh_that_names_none_is_refused() -> None:
    strict = STATS.replace("  replicas: 1\n", "  replicas: 1\n  requirePolicy: true\n")
    issue = only_issue(strict)  # alone: no Mesh, no annotation names a policy ID

    assert (issue.resource, issue.field) == ("Workload stats", "spec.requirePolicy")
    assert "no policy ID is named anywhere in the mesh, so every request would be refused" in issue.message
    named = decode_sources({"mesh.yaml": MESH + "---\n" + strict})  # the Mesh's default names one
    assert any(isinstance(r, Workload) and r.spec.require_policy for r in named.resources)


CACHE = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: cache}
spec:
  port: 6380
  protocol: tcp
  run: {command: [redis-server]}
"""


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (("calls: [stats]", "calls: [stats, cache]"), "spec.calls[1]", "'cache' speaks tcp: give it a local port"),
        (
            ("calls: [stats]", "calls: [stats]\n  localPorts: {stats: 6379}"),
            "spec.localPorts.stats",
            "only a protocol: tcp service takes a local port",
        ),
        (
            ("calls: [stats]", "calls: [stats]\n  localPorts: {cache: 6379}"),
            "spec.localPorts.cache",
            "'cache' is not in spec.calls; list it there too",
        ),
        (("service: results", "service: cache"), "spec.routes[0].service", "the Gateway routes HTTP only"),
    ],
)
def test_a_tcp_service_is_called_on_a_local_port_and_never_by_the_gateway(
    change: tuple[str, str], field: str, message: str
) -> None:
    issue = only_issue(mesh_yaml(change) + "---\n" + CACHE)
    assert issue.field == field and message in issue.message, issue


def test_a_local_port_serves_one_service_across_the_mesh() -> None:
    other = CACHE.replace("name: cache", "name: queue")
    one = mesh_yaml(("calls: [stats]", "calls: [stats, cache]\n  localPorts: {cache: 6379}"))
    two = STATS.replace("  replicas: 1\n", "  replicas: 1\n  calls: [queue]\n  localPorts: {queue: 6379}\n")
    found = issues(one.replace(STATS, two) + "---\n" + CACHE + "---\n" + other)
    assert [i.field for i in found] == ["spec.localPorts.queue"]
    assert "port 6379 is 'cache''s in Workload results" in found[0].message


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1",
        "localhost",
        "api.localhost",
        "0x7f000001",
        "2130706433",
        "::1",
        "::ffff:7f00:1",
        "0.0.0.0",
        "169.254.169.254",
    ],
)
def test_an_external_service_on_this_host_is_refused_unless_it_says_so(address: str) -> None:
    external = "apiVersion: mesh.codifyhq.io/v1\nkind: ExternalService\nmetadata: {{name: ledger}}\nspec: {{address: '{address}', port: 7000{extra}}}\n"
    issue = only_issue({"egress.yaml": external.format(address=address, extra="")})
    assert (issue.file, issue.document, issue.field) == ("egress.yaml", 1, "spec.address")
    assert "this host's own address" in issue.message and "allowLoopback: true" in issue.message
    decode_sources({"egress.yaml": external.format(address=address, extra=", allowLoopback: true")})  # accepted


def test_an_external_service_elsewhere_needs_no_word() -> None:
    external = "apiVersion: mesh.codifyhq.io/v1\nkind: ExternalService\nmetadata: {name: fec}\nspec: {address: api.open.fec.gov, port: 443}\n"
    decode_sources({"egress.yaml": external})  # accepted
