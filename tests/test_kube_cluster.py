"""kube/cluster.py: a cluster's objects (fixtures shaped as the API server returns them) -> the
mesh core's inputs. CRs go through the mesh-file loader; EndpointSlices become Endpoints; injected
Pods become the side-car Proxies to compile for."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format
from helpers_xds import make_credentials

from interstate.compile import compile_proxy
from interstate.compile.proxy import Proxy, Role
from interstate.config.loader import decode_sources, load, read_sources
from interstate.core.status import ReplicaState
from interstate.errors import ConfigError
from interstate.kube import cluster
from interstate.kube.bootstrap import ProxyPorts
from interstate.model import Workload
from interstate.model.index import Endpoint, MeshIndex
from interstate.simulate import simulate

FIXTURES = Path(__file__).parent / "fixtures" / "kube"
EXAMPLE = Path(__file__).parent.parent / "examples" / "election-night"


def fixture(name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads((FIXTURES / name).read_text())["items"]
    return items


def as_custom_resource(document: dict[str, Any], namespace: str, number: int) -> dict[str, Any]:
    """A mesh-file document as `kubectl get -o json` shows it once applied: server metadata added."""
    obj = copy.deepcopy(document)
    metadata = obj.setdefault("metadata", {})
    if document["kind"] != "Mesh":
        metadata["namespace"] = namespace
    metadata.update(uid=f"00000000-0000-4000-8000-{number:012d}", resourceVersion=str(1000 + number), generation=1)
    metadata["creationTimestamp"] = "2026-11-03T18:00:00Z"
    obj["status"] = {}
    return obj


def test_the_examples_mesh_files_as_custom_resources_give_the_same_mesh() -> None:
    documents = [d for text in read_sources(EXAMPLE).values() for d in yaml.safe_load_all(text) if d]
    mesh_kinds = [d for d in documents if d["apiVersion"].startswith("mesh.codifyhq.io/")]
    objects = [as_custom_resource(d, "elections", i) for i, d in enumerate(mesh_kinds)]
    from_cluster = cluster.mesh_config(objects)
    from_files = load(EXAMPLE)
    expected = sorted((r.ref, r) for r in from_files.resources if r.api_version.startswith("mesh.codifyhq.io/"))

    def without_namespace(r: Any) -> Any:  # the one thing a cluster adds: each object's namespace
        return r.model_copy(update={"metadata": r.metadata.model_copy(update={"namespace": None})})

    assert sorted((r.ref, without_namespace(r)) for r in from_cluster.resources) == expected
    namespaced = [r for r in from_cluster.resources if r.kind != "Mesh"]
    assert {r.metadata.namespace for r in namespaced} == {"elections"}
    assert MeshIndex(from_cluster).account("stats") == ("elections", "stats")
    assert MeshIndex(from_files).account("stats") == ("default", "stats")
    assert from_cluster.origin(from_cluster.resources[0])[0] in {cluster.object_name(o) for o in objects}


def test_custom_resources_from_the_api_validate_and_workloads_need_no_run() -> None:
    config = cluster.mesh_config(fixture("mesh-crs.json"))
    refs = sorted(r.ref for r in config.resources)
    assert refs == [
        "Gateway ingress",
        "Mesh election-night",
        "TrafficPolicy stats-breaker",
        "Workload results",
        "Workload stats",
    ]
    results = next(w for w in config.of_kind(Workload) if w.name == "results")
    assert results.spec.calls == ["stats"] and results.policy == "FEC-F101"
    assert config.origin(results) == ("elections/results", 1)
    # the server's metadata is not the mesh's business, and `kubectl apply`'s annotation is kept as is
    assert set(results.metadata.annotations) == {
        "mesh.codifyhq.io/policy",
        "kubectl.kubernetes.io/last-applied-configuration",
    }


def test_standalone_mesh_files_still_need_spec_run() -> None:
    text = "apiVersion: mesh.codifyhq.io/v1\nkind: Workload\nmetadata: {name: stats}\nspec: {port: 8080}\n"
    with pytest.raises(ConfigError) as caught:
        decode_sources({"mesh.yaml": text})
    assert [(i.file, i.resource, i.field) for i in caught.value.issues] == [("mesh.yaml", "Workload stats", "spec.run")]
    assert "required field is missing" in caught.value.issues[0].message
    assert decode_sources({"mesh.yaml": text}, kubernetes=True).of_kind(Workload)[0].spec.port == 8080


def with_bad_policy() -> list[dict[str, Any]]:
    objects = fixture("mesh-crs.json")
    policy = next(o for o in objects if o["kind"] == "TrafficPolicy")
    policy["spec"]["outlierDetection"]["baseEjectionTime"] = "30x"
    return objects


def test_a_bad_custom_resource_is_reported_by_namespace_name_kind_and_field_like_a_file() -> None:
    with pytest.raises(ConfigError) as caught:
        cluster.mesh_config(with_bad_policy())
    [issue] = caught.value.issues
    assert issue.file == "elections/stats-breaker"
    assert issue.resource == "TrafficPolicy stats-breaker"
    assert issue.field == "spec.outlierDetection.baseEjectionTime"
    assert str(issue).startswith(
        "elections/stats-breaker: document 1 (TrafficPolicy stats-breaker): spec.outlierDetection.baseEjectionTime: "
        "'30x' is not a duration"
    )


def test_unknown_fields_and_dangling_references_are_refused_as_in_files() -> None:
    objects = fixture("mesh-crs.json")
    results = next(o for o in objects if o["metadata"]["name"] == "results")
    results["spec"]["calls"] = ["stats", "tally"]
    with pytest.raises(ConfigError) as caught:
        cluster.mesh_config(objects)
    [issue] = caught.value.issues
    assert (issue.file, issue.field) == ("elections/results", "spec.calls[1]")
    assert "unknown service 'tally'" in issue.message
    results["spec"]["replicaz"] = 3
    with pytest.raises(ConfigError) as caught:
        cluster.mesh_config(objects)
    [issue] = caught.value.issues  # as in files: an undecodable document's references are not checked
    assert (issue.file, issue.field) == ("elections/results", "spec.replicaz")
    assert issue.message.startswith("unknown field; valid fields here: calls, localPorts, mtls, port")


def test_same_name_in_two_namespaces_is_a_duplicate_naming_both_objects() -> None:
    objects = fixture("mesh-crs.json")
    twin = copy.deepcopy(next(o for o in objects if o["metadata"]["name"] == "stats"))
    twin["metadata"]["namespace"] = "staging"
    with pytest.raises(ConfigError) as caught:
        cluster.mesh_config([*objects, twin])
    [issue] = caught.value.issues
    assert issue.field == "metadata.name" and "elections/stats" in str(issue) and "staging/stats" in str(issue)


def test_objects_of_two_kinds_with_one_name_are_both_read() -> None:
    objects = fixture("mesh-crs.json")
    policy = next(o for o in objects if o["kind"] == "TrafficPolicy")
    policy["metadata"]["name"] = "stats"  # same namespace/name as the Workload stats
    config = cluster.mesh_config(objects)
    assert {"TrafficPolicy stats", "Workload stats"} <= {r.ref for r in config.resources}


# ---- EndpointSlices -------------------------------------------------------------------------------

PORTS = ProxyPorts(admin=15000, outbound=15001, inbound=15006, ready=15021)


def test_endpoint_slices_give_ready_endpoints_through_the_side_car_of_injected_workloads() -> None:
    config = cluster.mesh_config(fixture("mesh-crs.json"))
    found = cluster.endpoints(fixture("endpointslices.json"), config, PORTS)
    # stats is injected: callers reach its side-cars' inbound port; not ready (.12) and
    # terminating (.13) are left out, unknown readiness (.14) counts as ready (the API's rule),
    # .11 is in two slices (once), and the first of an endpoint's addresses is used (.15)
    assert found["stats"] == (
        Endpoint("stats", 0, "127.0.0.11", 15006, "v3"),
        Endpoint("stats", 1, "127.0.0.14", 15006, "v3"),
        Endpoint("stats", 2, "127.0.0.15", 15006, "v3"),
    )
    assert found["results"] == (Endpoint("results", 0, "127.0.0.21", 15006, "v1"),)
    assert "legacy" not in found  # FQDN slices are not endpoints of the mesh
    assert not any(ep.address == "127.0.0.41" for eps in found.values() for ep in eps)  # no service label


def test_a_workload_without_side_car_is_reached_at_the_slice_port_named_http_else_the_first_tcp() -> None:
    objects = fixture("mesh-crs.json")
    stats = next(o for o in objects if o["metadata"]["name"] == "stats")
    stats["metadata"]["annotations"] = {"mesh.codifyhq.io/inject": "disabled"}
    config = cluster.mesh_config(objects)
    found = cluster.endpoints(fixture("endpointslices.json"), config, PORTS)
    assert {ep.port for ep in found["stats"]} == {8080}  # "http", not the first ("metrics")
    assert found["audit"] == (Endpoint("audit", 0, "127.0.0.31", 7070),)  # no Workload: first TCP port
    assert found["results"][0].port == 15006


# ---- Pods ---------------------------------------------------------------------------------------


def as_service_account(pods: list[dict[str, Any]], service: str, account: str) -> list[dict[str, Any]]:
    """The pods labelled as `service` running as `account` (in the fixture, stats' run as `default`)."""
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if service in (labels.get("app"), labels.get("app.kubernetes.io/name")):
            pod["spec"]["serviceAccountName"] = account
    return pods


def test_injected_running_pods_become_side_car_proxies() -> None:
    config = cluster.mesh_config(fixture("mesh-crs.json"))
    proxies = cluster.proxies(as_service_account(fixture("pods.json"), "stats", "stats"), config, PORTS)
    assert proxies == [
        Proxy(
            node_id="sidecar~results-5f7d8-x2x9q.elections",
            role=Role.SIDECAR,
            service="results",
            address="127.0.0.21",
            inbound_port=15006,
            outbound_port=15001,
            app_port=8081,  # the container port named http
            host_addresses=("127.0.0.21",),  # its pod IP (the fixture names no node IP)
        ),
        Proxy(
            node_id="sidecar~stats-6d9f7c-abcde.elections",
            role=Role.SIDECAR,
            service="stats",  # app.kubernetes.io/name
            address="127.0.0.11",
            inbound_port=15006,
            outbound_port=15001,
            app_port=8080,  # no app container port: the Workload's spec.port
            host_addresses=("127.0.0.11",),
        ),
    ]


def test_the_outbound_listener_goes_where_the_injector_pointed_the_apps_http_proxy() -> None:
    config = cluster.mesh_config(fixture("mesh-crs.json"))
    pod = fixture("pods.json")[0]
    app = pod["spec"]["containers"][0]
    app["env"] = [{"name": "NO_PROXY", "value": "localhost"}, {"name": "HTTP_PROXY", "value": "http://127.0.0.1:25001"}]
    proxy = cluster.proxy_of(pod, config, PORTS)
    assert isinstance(proxy, Proxy)
    assert (proxy.outbound_port, proxy.inbound_port) == (25001, 15006)  # inbound: how other pods reach it
    # not a loopback proxy of the side-car (or not a URL): the controller's own setting
    for value in ("http://squid.corp:3128", "not a url:x", "http://127.0.0.1"):
        app["env"] = [{"name": "HTTP_PROXY", "value": value}]
        proxy = cluster.proxy_of(pod, config, PORTS)
        assert isinstance(proxy, Proxy) and proxy.outbound_port == 15001, value


def test_why_a_pod_has_no_proxy() -> None:
    config = cluster.mesh_config(fixture("mesh-crs.json"))
    pods = as_service_account(fixture("pods.json"), "stats", "stats")
    reasons = {p["metadata"]["name"]: cluster.proxy_of(p, config) for p in pods}
    assert reasons["stats-6d9f7c-pending"] == "no pod IP yet"
    assert reasons["migrate-db-7k2"] == "pod has finished (Succeeded)"
    assert reasons["redis-0"] == "not injected"
    assert reasons["unlabelled-1"] == "no service label (app or app.kubernetes.io/name)"
    assert cluster.node_id(fixture("pods.json")[0]) == "sidecar~results-5f7d8-x2x9q.elections"


# ---- who may carry a workload's identity -------------------------------------------------------


def test_only_the_workloads_own_service_account_gets_its_side_car_and_certificate() -> None:
    """A label is not a proof: a pod labelled `app: results` gets results' config (and so its
    SVID) only when it runs as service account `results` in the Workload's namespace."""
    config = cluster.mesh_config(fixture("mesh-crs.json"))
    assert cluster.entitled(config, "results") == ("elections", "results")  # the Workload CR's namespace
    assert cluster.entitled(config, "redis") is None  # no Workload: nobody
    honest = fixture("pods.json")[0]
    assert isinstance(cluster.proxy_of(honest, config, PORTS), Proxy)

    def impostor(namespace: str, account: str | None, app: str = "results") -> dict[str, Any]:
        pod = copy.deepcopy(honest)
        pod["metadata"].update(name="results-impostor", namespace=namespace, labels={"app": app})
        pod["spec"].pop("serviceAccountName")
        if account is not None:
            pod["spec"]["serviceAccountName"] = account
        return pod

    refused = {
        "another service account": impostor("elections", "intruder"),
        "the namespace's default": impostor("elections", None),
        "another namespace": impostor("intruders", "results"),
        "a service without a Workload": impostor("elections", "redis", app="redis"),
    }
    reasons = {case: cluster.proxy_of(pod, config, PORTS) for case, pod in refused.items()}
    assert reasons == {
        "another service account": "labelled as workload 'results', whose identity belongs to service account "
        "'results' in namespace 'elections' (the Workload's), but runs as service account 'intruder' in namespace "
        "'elections'",
        "the namespace's default": "labelled as workload 'results', whose identity belongs to service account "
        "'results' in namespace 'elections' (the Workload's), but runs as service account 'default' in namespace "
        "'elections'",
        "another namespace": "labelled as workload 'results', whose identity belongs to service account "
        "'results' in namespace 'elections' (the Workload's), but runs as service account 'results' in namespace "
        "'intruders'",
        "a service without a Workload": "labelled as service 'redis', which has no Workload: no service account "
        "may carry its identity (create the Workload, and run its pods as service account 'redis' in the "
        "Workload's namespace)",
    }
    assert cluster.proxies([honest, *refused.values()], config, PORTS) == [cluster.proxy_of(honest, config, PORTS)]

    # the claims the controller binds tokens to: every injected, labelled pod, refused or not
    claims = cluster.claims([honest, *refused.values(), *fixture("pods.json")[4:]], config)
    assert claims["sidecar~results-5f7d8-x2x9q.elections"] == cluster.PodClaim(
        "results", ("elections", "results"), ("elections", "results"), "3c4d5e6f-0000-4000-8000-000000000021"
    )  # with the pod's uid, which a TokenReview's pod-uid must match
    assert claims["sidecar~results-impostor.intruders"].refusal == reasons["another namespace"]
    assert "sidecar~redis-0.elections" not in claims  # not injected
    assert "sidecar~unlabelled-1.elections" not in claims  # no service label

    # labels change, service accounts do not: relabelled, the pod loses the side-car it had
    relabelled = copy.deepcopy(honest)
    relabelled["metadata"]["labels"] = {"app": "stats"}
    assert "runs as service account 'results'" in str(cluster.proxy_of(relabelled, config, PORTS))


def test_pods_as_replicas_for_status() -> None:
    """Status in Kubernetes mode: each labelled pod is a replica, ready when its Ready condition
    is true, draining once deleted, stopped once finished; an injected pod's side-car is read at
    its ready port (the proxy container's `mesh-ready`, else the default) on its pod IP."""
    pods = copy.deepcopy(fixture("pods.json"))
    results = next(p for p in pods if p["metadata"]["name"] == "results-5f7d8-x2x9q")
    assert cluster.replica_state(results) is ReplicaState.STARTING  # no Ready condition yet
    results["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert cluster.replica_state(results) is ReplicaState.READY
    assert cluster.replica_state({**results, "metadata": {**results["metadata"], "deletionTimestamp": "x"}}) is (
        ReplicaState.DRAINING
    )
    assert cluster.replica_state({"status": {"phase": "Succeeded"}}) is ReplicaState.STOPPED
    assert cluster.metrics_url(results, PORTS) == "http://127.0.0.21:15021"
    declared = copy.deepcopy(results)
    declared["spec"]["initContainers"] = [  # the native side-car, as the injector writes it
        {"name": "interstate-proxy", "ports": [{"name": "mesh-ready", "containerPort": 25021}]}
    ]
    assert cluster.metrics_url(declared, PORTS) == "http://127.0.0.21:25021"
    assert cluster.metrics_url({"status": {}}, PORTS) is None

    replicas = cluster.replicas(pods, {}, PORTS)
    [replica] = replicas["results"]
    assert (replica.name, replica.state, replica.xds) == ("results-5f7d8-x2x9q", ReplicaState.READY, None)
    assert replica.sidecar is not None and replica.sidecar.node == "sidecar~results-5f7d8-x2x9q.elections"
    assert cluster.replica_names(pods, PORTS)["127.0.0.21:15006"] == "results-5f7d8-x2x9q"


def test_callers_check_the_callees_namespaced_identity_and_a_workload_may_name_its_account() -> None:
    """In a cluster a workload's SPIFFE ID is ns/<its Workload's namespace>/sa/<its account>:
    the certificate the core issues names it and every caller's side-car checks it (issue 24).
    `spec.serviceAccount` names another account than the workload's own name."""
    objects = copy.deepcopy(fixture("mesh-crs.json"))
    stats = next(o for o in objects if o["kind"] == "Workload" and o["metadata"]["name"] == "stats")
    stats["spec"]["serviceAccount"] = "stats-reader"
    index = MeshIndex(cluster.mesh_config(objects), {"stats": (Endpoint("stats", 0, "127.0.0.11", 15006),)})
    assert index.account("stats") == ("elections", "stats-reader")
    assert index.account("results") == ("elections", "results")
    results = Proxy.sidecar("results", 0, inbound_port=1, outbound_port=2, app_port=3)
    resources = compile_proxy(index, results, make_credentials("results"))
    [to_stats] = [c for c in resources.clusters if c.name == "outbound|stats"]
    context = tls_pb2.UpstreamTlsContext()
    to_stats.transport_socket.typed_config.Unpack(context)
    [san] = (
        context.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    )
    assert san.matcher.exact == f"spiffe://{index.mesh.trust_domain}/ns/elections/sa/stats-reader"
    assert cluster.entitled(index.config, "stats") == ("elections", "stats-reader")


def test_a_service_of_the_same_name_in_another_namespace_is_not_the_workloads() -> None:
    """An EndpointSlice `stats` in namespace `staging` does not join `elections/stats` (whose
    Workload is in `elections`): its pods are another service, not mTLS endpoints of this one."""
    config = cluster.mesh_config(fixture("mesh-crs.json"))
    slices = copy.deepcopy(fixture("endpointslices.json"))
    staging = copy.deepcopy(
        next(s for s in slices if s["metadata"]["labels"].get(cluster.SERVICE_NAME_LABEL) == "stats")
    )
    staging["metadata"]["namespace"] = "staging"
    staging["endpoints"] = [{"addresses": ["127.0.0.99"], "conditions": {"ready": True}}]
    found = cluster.endpoints([*slices, staging], config, PORTS)
    assert "127.0.0.99" not in {ep.address for ep in found["stats"]}
    assert found["stats"] == cluster.endpoints(slices, config, PORTS)["stats"]


@pytest.mark.parametrize(
    "host",
    ["stats", "stats:8080", "stats.elections", "stats.elections.svc:8080", "stats.elections.svc.cluster.local:8080"],
)
def test_apps_reach_a_service_by_every_name_kubernetes_gives_it(host: str) -> None:
    index = MeshIndex(
        cluster.mesh_config(fixture("mesh-crs.json")), {"stats": (Endpoint("stats", 0, "127.0.0.11", 15006),)}
    )
    results = Proxy.sidecar("results", 0, inbound_port=1, outbound_port=2, app_port=3)
    outcome = simulate(compile_proxy(index, results), "outbound", host, "/tallies")
    assert outcome.cluster == "outbound|stats" and outcome.endpoints == ("127.0.0.11:15006",), outcome.describe()
    other = simulate(compile_proxy(index, results), "outbound", "stats.staging.svc.cluster.local", "/tallies")
    assert other.cluster != "outbound|stats"  # another namespace's stats is not this one


def test_a_side_car_never_forwards_to_its_pods_or_its_nodes_address() -> None:
    """Issue 25 in a cluster: the egress guard refuses the pod's own IPs and its node's, as it
    refuses loopback (the side-car's passthrough and ExternalService clusters carry them)."""
    pods = copy.deepcopy(fixture("pods.json"))
    results = next(p for p in pods if p["metadata"]["name"] == "results-5f7d8-x2x9q")
    results["status"] |= {"hostIP": "198.18.7.1", "hostIPs": [{"ip": "198.18.7.1"}, {"ip": "fd00::7"}]}
    config = cluster.mesh_config(fixture("mesh-crs.json"))
    proxy = cluster.proxy_of(results, config, PORTS)
    assert isinstance(proxy, Proxy)
    assert proxy.host_addresses == ("127.0.0.21", "198.18.7.1", "fd00::7")
    passthrough_mesh = copy.deepcopy(fixture("mesh-crs.json"))
    mesh = next(o for o in passthrough_mesh if o["kind"] == "Mesh")
    mesh["spec"]["outboundTrafficPolicy"] = {"mode": "ALLOW_ANY"}
    resources = compile_proxy(MeshIndex(cluster.mesh_config(passthrough_mesh)), proxy)
    [passthrough] = [c for c in resources.clusters if c.name == "outbound|passthrough"]
    guarded = json_format.MessageToJson(passthrough)  # the nested typed configs, unpacked
    mapped = str(ipaddress.ip_address("::ffff:198.18.7.1"))  # as Envoy's CIDR is written: ::ffff:c612:701
    for network in ("198.18.7.1", "fd00::7", mapped, "127.0.0.0"):
        assert f'"addressPrefix": "{network}"' in guarded, network
