"""The real Kubernetes control plane of tests/kube_control_plane.py: what the real kube-apiserver
and kube-controller-manager do with the objects interstate's controller reads and writes, so the
fakes of tests/helpers_kube.py can be checked against them. One control plane (about 4 s to
start) is shared by the module's tests; each test works in its own namespace.
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from kube_control_plane import ControlPlane, bin_dir, binaries_built, running_control_plane

if not binaries_built() and shutil.which("go") is None:
    pytest.skip(
        f"no Kubernetes binaries in {bin_dir()} and no 'go' on PATH to build them (make kube-tools)",
        allow_module_level=True,
    )

# The timeout also covers a first build in the fixture (tests/kube/tools/build.sh: about 6 min on
# 2 cores with empty Go caches) when `make kube-tools` has not run before.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

T = TypeVar("T")
DEADLINE = 60.0  # seconds for a controller to act on a busy 2-core machine


def poll(check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """`check()` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("kube")) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def api(cluster: ControlPlane) -> Iterator[httpx.Client]:
    with cluster.client() as client:
        yield client


def create(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = api.post(path, json=body)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def namespace(api: httpx.Client, name: str) -> str:
    create(api, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def items(api: httpx.Client, path: str, **params: str) -> list[dict[str, Any]]:
    answer = api.get(path, params=params)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["items"]
    return found


def found(api: httpx.Client, path: str) -> dict[str, Any]:
    """The object at `path`, or {} while it is not there (404)."""
    answer = api.get(path)
    if answer.status_code == 404:
        return {}
    assert answer.status_code == 200, answer.text
    got: dict[str, Any] = answer.json()
    return got


def test_deployment_gets_a_replicaset_and_two_pending_pods(api: httpx.Client) -> None:
    ns = namespace(api, "shop")
    labels = {"app": "checkout"}
    deployment = create(
        api,
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "checkout", "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "example/app:1",
                                "ports": [{"name": "http", "containerPort": 8080}],
                            }
                        ]
                    },
                },
            },
        },
    )

    replicasets = poll(lambda: items(api, f"/apis/apps/v1/namespaces/{ns}/replicasets"), "the ReplicaSet")
    assert len(replicasets) == 1
    replicaset = replicasets[0]
    (owner,) = replicaset["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Deployment", "checkout", deployment["metadata"]["uid"])
    assert owner["controller"] is True
    assert replicaset["spec"]["replicas"] == 2
    assert replicaset["metadata"]["name"].startswith("checkout-")

    def two_pods() -> list[dict[str, Any]] | None:
        found = items(api, f"/api/v1/namespaces/{ns}/pods", labelSelector="app=checkout")
        return found if len(found) == 2 else None

    pods = poll(two_pods, "2 Pods")
    for pod in pods:
        (owner,) = pod["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("ReplicaSet", replicaset["metadata"]["uid"])
        assert pod["metadata"]["labels"]["pod-template-hash"] == replicaset["metadata"]["labels"]["pod-template-hash"]
        assert pod["status"]["phase"] == "Pending"
        assert "nodeName" not in pod["spec"]  # no scheduler, no node
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "example/app:1"
        assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        # The ServiceAccount admission plugin's defaults, as on a real cluster.
        assert pod["spec"]["serviceAccountName"] == "default"
        assert any(volume["name"].startswith("kube-api-access-") for volume in pod["spec"]["volumes"])

    def counted() -> dict[str, Any] | None:
        status = found(api, f"/apis/apps/v1/namespaces/{ns}/deployments/checkout")["status"]
        return status if status.get("replicas") == 2 else None

    status = poll(counted, "the Deployment's status")
    assert status.get("readyReplicas", 0) == 0  # nothing runs the Pods
    assert status["unavailableReplicas"] == 2


def test_missing_crd_collection_is_404_and_a_user_without_rbac_gets_403(
    cluster: ControlPlane, api: httpx.Client
) -> None:
    missing = api.get("/apis/mesh.codifyhq.io/v1alpha1/namespaces/x/trafficpolicies")
    # An API group nobody registered (the CRD is not installed): the server's plain-text 404,
    # not a Status object.
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/plain")
    assert missing.text == "404 page not found\n"

    with cluster.client(cert=cluster.user_cert("nobody", ["interstate:testers"])) as nobody:
        denied = nobody.get("/api/v1/namespaces/default/pods")
        assert denied.status_code == 403
        status = denied.json()
        assert (status["kind"], status["reason"], status["code"]) == ("Status", "Forbidden", 403)
        assert 'User "nobody" cannot list resource "pods"' in status["message"]
        # Authenticated all the same: the certificate's CN and O are the user and its groups.
        review = nobody.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        assert review.status_code == 201, review.text
        user = review.json()["status"]["userInfo"]
        assert user["username"] == "nobody"
        assert "interstate:testers" in user["groups"]
        assert "system:authenticated" in user["groups"]

    with httpx.Client(base_url=cluster.url, verify=ssl.create_default_context(cafile=cluster.ca_file)) as anonymous:
        assert anonymous.get("/api/v1/namespaces/default/pods").status_code == 403  # system:anonymous


def watch_lines(
    api: httpx.Client, path: str, params: dict[str, str], stop: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """A watch's events, one JSON object per line, until `stop(events)` or the server ends it."""
    events: list[dict[str, Any]] = []
    with api.stream("GET", path, params={"watch": "1", **params}, timeout=httpx.Timeout(30.0)) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        for line in answer.iter_lines():
            if line:
                events.append(json.loads(line))
                if stop(events):
                    break
    return events


def named(events: list[dict[str, Any]], kind: str) -> list[str]:
    return [event["object"]["metadata"]["name"] for event in events if event["type"] == kind]


def test_watch_streams_json_lines_with_bookmarks_and_answers_an_old_resource_version(api: httpx.Client) -> None:
    ns = namespace(api, "watching")
    configmaps = f"/api/v1/namespaces/{ns}/configmaps"
    listed = api.get(configmaps).json()["metadata"]["resourceVersion"]
    for index in range(3):
        create(api, configmaps, {"metadata": {"name": f"c{index}"}, "data": {"i": str(index)}})

    # From the list's resourceVersion with bookmarks allowed, until the server ends the watch at
    # timeoutSeconds: the 3 creations in order. A BOOKMARK before the end is up to the watch cache
    # (seen at about 2.5 s of a 4 s watch, not in every run): when one comes, it carries only a
    # resourceVersion.
    started = time.monotonic()
    events = watch_lines(
        api,
        configmaps,
        {"resourceVersion": listed, "allowWatchBookmarks": "true", "timeoutSeconds": "2"},
        lambda _: False,
    )
    assert time.monotonic() - started < 10
    assert [name for name in named(events, "ADDED") if name.startswith("c")] == ["c0", "c1", "c2"]
    assert {event["type"] for event in events} <= {"ADDED", "BOOKMARK"}
    assert all(event["object"]["kind"] == "ConfigMap" for event in events)
    for bookmark in (event for event in events if event["type"] == "BOOKMARK"):
        assert set(bookmark["object"]["metadata"]) == {"resourceVersion"}

    # A watch-list (sendInitialEvents): the current objects as ADDED, then at once a BOOKMARK that
    # marks the end of the initial events, at a resourceVersion not older than theirs.
    events = watch_lines(
        api,
        configmaps,
        {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"},
        stop=lambda seen: seen[-1]["type"] == "BOOKMARK",
    )
    assert {"c0", "c1", "c2"} <= set(named(events[:-1], "ADDED"))
    assert [event["type"] for event in events[:-1]] == ["ADDED"] * (len(events) - 1)
    end = events[-1]["object"]["metadata"]
    assert end["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert all(int(end["resourceVersion"]) >= int(e["object"]["metadata"]["resourceVersion"]) for e in events)

    # Many writes, then a watch from resourceVersion "1". Seen here: the watch cache, which keeps
    # every event of its first 75 s, replays the whole history (even after an etcd compaction);
    # once it has dropped events older than the requested version it answers with a 410 ERROR
    # event instead, which is what a watch from a version before its window gets.
    for index in range(150):
        api.put(f"{configmaps}/c0", json={"metadata": {"name": "c0"}, "data": {"i": str(index)}}).raise_for_status()
    events = watch_lines(
        api,
        configmaps,
        {"resourceVersion": "1", "timeoutSeconds": "10"},
        stop=lambda seen: seen[-1]["type"] == "ERROR" or seen[-1]["object"]["data"] == {"i": "149"},
    )
    if events[0]["type"] == "ERROR":
        (expired,) = events
        assert (expired["object"]["kind"], expired["object"]["code"]) == ("Status", 410)
        assert expired["object"]["reason"] == "Expired"
    else:
        assert [name for name in named(events, "ADDED") if name.startswith("c")] == ["c0", "c1", "c2"]
        updates = [event["object"]["data"]["i"] for event in events if event["type"] == "MODIFIED"]
        # The first PUT wrote what c0 already held: a no-op update, no new version, no event.
        assert updates == [str(index) for index in range(1, 150)]


def test_default_service_account_appears_and_gets_tokens(cluster: ControlPlane, api: httpx.Client) -> None:
    ns = namespace(api, "accounts")
    account = poll(lambda: found(api, f"/api/v1/namespaces/{ns}/serviceaccounts/default"), "the default ServiceAccount")
    assert account["metadata"]["namespace"] == ns
    # The root-CA publisher's ConfigMap, which the projected token volume of every Pod mounts.
    root_ca = poll(lambda: found(api, f"/api/v1/namespaces/{ns}/configmaps/kube-root-ca.crt"), "kube-root-ca.crt")
    assert root_ca["data"]["ca.crt"] == Path(cluster.ca_file).read_text()

    token = cluster.token_for(ns, "default", audiences=["interstate"])
    review = create(
        api,
        "/apis/authentication.k8s.io/v1/tokenreviews",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": ["interstate"]},
        },
    )
    assert review["status"]["authenticated"] is True
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{ns}:default"
    assert review["status"]["audiences"] == ["interstate"]
