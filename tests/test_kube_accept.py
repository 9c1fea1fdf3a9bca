"""Which mesh resources of a cluster are in force when some are invalid (`kube.accept`, issue
24): one bad resource holds back itself and what depends on it, never the rest; one made invalid
keeps its last good version in force; each gets the status the controller writes."""

from __future__ import annotations

import copy
from typing import Any

from interstate.kube import accept
from interstate.model.index import MeshIndex

NS = "elections"


def obj(kind: str, name: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "generation": generation}
    if kind != "Mesh":
        metadata["namespace"] = NS
    return {"apiVersion": "mesh.codifyhq.io/v1", "kind": kind, "metadata": metadata, "spec": spec}


def cluster() -> list[dict[str, Any]]:
    return [
        obj("Mesh", "fec", {"trustDomain": "fec.gov.local"}),
        obj("Workload", "results", {"port": 8080, "calls": ["stats"]}),
        obj("Workload", "stats", {"port": 8080}),
        obj("TrafficPolicy", "stats-breaker", {"destination": {"service": "stats"}, "timeout": "3s"}),
    ]


def test_all_valid_is_all_in_force() -> None:
    outcome = accept.accept(cluster(), {})
    assert outcome.config is not None and outcome.refused == {} and len(outcome.config.resources) == 4


def test_an_invalid_resource_holds_back_itself_and_what_depends_on_it_only() -> None:
    objects = cluster()
    objects.append(obj("TrafficPolicy", "ghost", {"destination": {"service": "ghost"}}))
    objects.append(obj("Workload", "archive", {"port": "eighty"}))  # invalid itself
    objects.append(obj("Workload", "press", {"port": 8080, "calls": ["archive"]}))  # depends on it
    outcome = accept.accept(objects, {})
    assert outcome.config is not None
    assert set(outcome.refused) == {
        (f"{NS}/ghost", "TrafficPolicy"),
        (f"{NS}/archive", "Workload"),
        (f"{NS}/press", "Workload"),
    }
    index = MeshIndex(outcome.config)
    assert set(index.workloads) == {"results", "stats"} and "stats" in index.traffic_policies
    why = accept.status_of(objects[-1], outcome.refused[(f"{NS}/press", "Workload")], False, "t")
    assert why["conditions"][0]["status"] == "False" and "archive" in why["conditions"][0]["message"]


def test_a_resource_made_invalid_keeps_its_last_good_version_in_force_and_says_so() -> None:
    good = cluster()
    last_good = {accept.key_of(o): o for o in good}
    edited = copy.deepcopy(good)
    edited[3]["spec"]["timeout"] = "soon"
    edited[3]["metadata"]["generation"] = 2
    outcome = accept.accept(edited, last_good)
    key = (f"{NS}/stats-breaker", "TrafficPolicy")
    assert outcome.config is not None and key in outcome.refused and outcome.kept == {key}
    in_force = MeshIndex(outcome.config).traffic_policies["stats"].spec.timeout
    assert in_force is not None and in_force.total_seconds() == 3
    status = accept.status_of(edited[3], outcome.refused[key], True, "2026-12-08T04:00:00Z")
    [condition] = status["conditions"]
    assert status["observedGeneration"] == 2 and condition["observedGeneration"] == 2
    assert condition["reason"] == "Invalid" and condition["message"].endswith("(the previous version stays in force)")


def test_the_transition_time_moves_only_when_the_condition_does() -> None:
    item = cluster()[2]
    first = accept.status_of(item, [], False, "2026-12-08T04:00:00Z")
    item["status"] = first
    assert accept.unchanged(item, accept.status_of(item, [], False, "2026-12-08T05:00:00Z"))
    outcome = accept.accept([*cluster()[:2], obj("Workload", "stats", {"port": "x"})], {})
    later = accept.status_of(item, outcome.refused[(f"{NS}/stats", "Workload")], False, "2026-12-08T05:00:00Z")
    assert later["conditions"][0]["lastTransitionTime"] == "2026-12-08T05:00:00Z"
