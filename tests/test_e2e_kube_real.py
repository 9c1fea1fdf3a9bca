"""End to end against a real kube-apiserver, etcd and kube-controller-manager
(tests/kube_control_plane.py): `interstate manifests install` is accepted whole, and the
controller, running as the ServiceAccount those manifests create with exactly their RBAC, reads
the cluster through the real list/watch protocol.

What only a real API server could show (issue 24), and this does:
- our CRD schemas are accepted (every CRD `Established`) and enforced (a TrafficPolicy whose
  `spec.timeout` is a number is refused with 422 at create);
- started before the CRDs exist, the controller names each mesh collection the API server does
  not serve (404) and lists it once its CRD is installed;
- with a ClusterRole that lacks one verb, it names the collection RBAC refuses (403, the verb
  and its account) and pushes nothing: fail closed;
- with its own RBAC, a pod that the test's stand-in kubelet marks Running and Ready becomes a
  side-car snapshot in the core, and a replica in the core's status.
Nothing connects to the pod's address (198.18.0.10): no network namespace is needed here.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from helpers_xds import free_port, run
from kube_control_plane import ControlPlane, running_control_plane

from interstate.ca.authority import Authority, utcnow
from interstate.core.identity import IdentitySettings
from interstate.core.plane import ControlPlane as Core
from interstate.core.status import ReplicaState
from interstate.kube import crds, install, webhook
from interstate.kube.controller import Controller, ControllerSettings, mesh_resource_types
from interstate.kube.inject import INJECTED_ANNOTATION, InjectSettings
from interstate.kube.lease import LeaseSettings
from interstate.kube.watch import ApiSettings
from interstate.model.base import API_GROUP
from interstate.model.index import MeshIndex

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]  # a first build of the binaries

SYSTEM = "interstate-system"
NAMESPACE = "elections"
POD = "stats-6d9f7c-abcde"
NODE = f"sidecar~{POD}.{NAMESPACE}"
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    *crds.CLUSTER_SCOPED,
}
T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("kube")) as plane:
        yield plane


def collection(obj: dict[str, Any]) -> str:
    """The REST path objects of `obj`'s kind are created at."""
    group_version, kind = obj["apiVersion"], obj["kind"]
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    plural = crds.plural_of(kind) if group_version.startswith(API_GROUP) else kind.lower() + "s"
    namespace = obj["metadata"].get("namespace")
    return f"{root}/namespaces/{namespace}/{plural}" if kind not in CLUSTER_SCOPED else f"{root}/{plural}"


def create(api: httpx.Client, obj: dict[str, Any]) -> dict[str, Any]:
    response = api.post(collection(obj), json=obj)
    assert response.status_code == 201, (obj["kind"], obj["metadata"]["name"], response.text)
    created: dict[str, Any] = response.json()
    return created


async def until(what: str, check: Callable[[], T | None], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def established(api: httpx.Client, name: str) -> bool:
    response = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    conditions = response.json().get("status", {}).get("conditions", []) if response.status_code == 200 else []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def controller_for(
    cluster: ControlPlane,
    tmp: Path,
    account: str,
    lease: LeaseSettings | None = None,
    identity: str = "one",
    namespaces: tuple[str, ...] = (),
    ca_secret: tuple[str, str] | None = None,
) -> tuple[Controller, Core]:
    token = cluster.token_for(SYSTEM, account)
    api = ApiSettings(cluster.url, token=token, ca_file=Path(cluster.ca_file), backoff_s=0.2, max_backoff_s=1.0)
    core = Core(IdentitySettings(tmp / "certs", tmp / "ca"), tmp / "audit.jsonl")
    settings = ControllerSettings(
        api,
        xds_host="127.0.0.1",
        xds_port=free_port(),
        lease=lease,
        identity=identity,
        namespaces=namespaces,
        ca_secret=ca_secret,
    )
    return Controller(settings, core), core


def ensure(api: httpx.Client, obj: dict[str, Any]) -> None:
    """Create `obj` unless it exists (tests of this module may run alone or in any order)."""
    response = api.post(collection(obj), json=obj)
    assert response.status_code in (201, 409), response.text


async def installed(api: httpx.Client, *namespaces: str) -> None:
    """`interstate manifests install` applied (its CRDs established), `namespaces`, and the Mesh `fec`."""
    objects = install.manifests(SYSTEM)
    for obj in objects:
        ensure(api, obj)
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":
            await until("established", lambda o=obj: established(api, o["metadata"]["name"]))
    for namespace in namespaces:
        ensure(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    mesh = {"apiVersion": f"{API_GROUP}/v1", "kind": "Mesh", "metadata": {"name": "fec"}}
    ensure(api, {**mesh, "spec": {"trustDomain": "fec.gov.local"}})


WORKLOADS = f"/apis/{API_GROUP}/v1/namespaces/{NAMESPACE}/workloads"
POLICIES = f"/apis/{API_GROUP}/v1/namespaces/{NAMESPACE}/trafficpolicies"


def policy(name: str, service: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/v1",
        "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"destination": {"service": service}},
    }


def accepted(api: httpx.Client, path: str) -> tuple[str, str]:
    """The object's `Accepted` condition: (status, message), ("", "") while it has none."""
    conditions = api.get(path).json().get("status", {}).get("conditions", [])
    found = next((c for c in conditions if c["type"] == "Accepted"), None)
    return ("", "") if found is None else (found["status"], found["message"])


def stats_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD,
            "namespace": NAMESPACE,
            "labels": {"app": "stats"},
            "annotations": {INJECTED_ANNOTATION: "test"},
        },
        "spec": {
            "serviceAccountName": "stats",
            "nodeName": "node-1",  # bound, as a scheduler would
            "containers": [
                {"name": "stats", "image": "example/stats:1", "ports": [{"name": "http", "containerPort": 8080}]}
            ],
        },
    }


def kubelet_reports_running(api: httpx.Client, name: str, ip: str) -> None:
    """What the test kubelet writes through the status subresource: Running, its IP, Ready."""
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    response = api.patch(
        f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status",
        json={"status": status},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text


def test_the_controller_reads_a_real_cluster_with_the_rbac_of_its_own_manifests(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    everything = install.manifests(SYSTEM)
    definitions = [o for o in everything if o["kind"] == "CustomResourceDefinition"]
    mesh_paths = {r.path for r in mesh_resource_types()}

    async def body() -> None:
        with cluster.client() as api:
            for obj in everything:
                if obj["kind"] != "CustomResourceDefinition":
                    create(api, obj)
            controller, core = controller_for(cluster, tmp_path / "one", install.CONTROLLER)
            await controller.start()
            try:
                # no CRDs yet: every mesh collection named as not served, nothing else
                problems = await until("404s", lambda: set(p := controller.problems()) == {*mesh_paths, "mesh"} and p)
                assert all("404" in problems[path] for path in mesh_paths), problems
                assert set(problems) == {*mesh_paths, "mesh"}, problems  # and no Mesh: no xDS yet
                assert not controller.serving.is_set()
                for obj in definitions:
                    create(api, obj)
                for obj in definitions:
                    await until(
                        f"{obj['metadata']['name']} established", lambda o=obj: established(api, o["metadata"]["name"])
                    )
                await until("every collection listed", lambda: set(controller.problems()) == {"mesh"})

                # the real CRD schema refuses a malformed TrafficPolicy at create
                create(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
                bad = {
                    "apiVersion": f"{API_GROUP}/v1",
                    "kind": "TrafficPolicy",
                    "metadata": {"name": "stats-breaker", "namespace": NAMESPACE},
                    "spec": {"destination": {"service": "stats"}, "timeout": 5},
                }
                refused = api.post(collection(bad), json=bad)
                assert refused.status_code == 422 and "spec.timeout" in refused.text, refused.text

                # a workload and its pod: a snapshot for the side-car, a replica in the status
                create(
                    api,
                    {
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "metadata": {"name": "stats", "namespace": NAMESPACE},
                    },
                )
                mesh = {"apiVersion": f"{API_GROUP}/v1", "kind": "Mesh", "metadata": {"name": "fec"}}
                create(api, {**mesh, "spec": {"trustDomain": "fec.gov.local"}})
                workload = {"apiVersion": f"{API_GROUP}/v1", "kind": "Workload"}
                create(api, {**workload, "metadata": {"name": "stats", "namespace": NAMESPACE}, "spec": {"port": 8080}})
                create(api, stats_pod())
                kubelet_reports_running(api, POD, "198.18.0.10")
                await until("a snapshot for the pod's side-car", lambda: core.cache.get(NODE))
                assert controller.problems() == {}
                assert core.identity is not None and core.identity.trust_domain == "fec.gov.local"
                [replica] = controller.status().services["stats"].replicas
                assert (replica.name, replica.state) == (POD, ReplicaState.READY)

                # every mesh resource says it is in force, through its status subresource
                for path in (f"/apis/{API_GROUP}/v1/meshes/fec", f"{WORKLOADS}/stats"):
                    await until(f"{path} Accepted", lambda p=path: accepted(api, p) == ("True", "in force"))
                # a TrafficPolicy the schema lets in but the mesh refuses (no such workload):
                # Invalid with the loader's words, and it holds back nothing else
                ghost = {**policy("ghost-breaker", "ghost"), "spec": {"destination": {"service": "ghost"}}}
                create(api, ghost)
                why = await until(
                    "Invalid", lambda: (a := accepted(api, f"{POLICIES}/ghost-breaker"))[0] == "False" and a[1]
                )
                assert "ghost" in why and "spec.destination" in why, why
                create(
                    api, {**workload, "metadata": {"name": "archive", "namespace": NAMESPACE}, "spec": {"port": 8080}}
                )
                await until(
                    "archive in force",
                    lambda: controller.config and "archive" in MeshIndex(controller.config).workloads,
                )
                assert "TrafficPolicy ghost-breaker" not in {r.ref for r in controller.config.resources}
                # a valid one made invalid: its previous version stays in force, and it says so
                create(
                    api,
                    {
                        **policy("stats-breaker", "stats"),
                        "spec": {"destination": {"service": "stats"}, "timeout": "3s"},
                    },
                )
                await until("stats-breaker Accepted", lambda: accepted(api, f"{POLICIES}/stats-breaker")[0] == "True")
                patched = api.patch(
                    f"{POLICIES}/stats-breaker",
                    json={"spec": {"destination": {"service": "ghost"}}},
                    headers={"content-type": "application/merge-patch+json"},
                )
                assert patched.status_code == 200, patched.text
                why = await until(
                    "kept", lambda: (a := accepted(api, f"{POLICIES}/stats-breaker"))[0] == "False" and a[1]
                )
                assert "the previous version stays in force" in why, why
                in_force = MeshIndex(controller.config).traffic_policies["stats"]
                assert in_force.spec.timeout is not None and in_force.spec.timeout.total_seconds() == 3
                # fixed: Accepted again, at the new generation
                fixed = api.patch(
                    f"{POLICIES}/ghost-breaker",
                    json={"spec": {"destination": {"service": "archive"}}},
                    headers={"content-type": "application/merge-patch+json"},
                )
                assert fixed.status_code == 200 and fixed.json()["metadata"]["generation"] == 2, fixed.text
                await until("fixed", lambda: accepted(api, f"{POLICIES}/ghost-breaker") == ("True", "in force"))
                status = api.get(f"{POLICIES}/ghost-breaker").json()["status"]
                assert status["observedGeneration"] == 2 and status["conditions"][0]["observedGeneration"] == 2
            finally:
                await controller.stop()

            # a ClusterRole without `list` on one mesh kind: named, and nothing pushed
            limited = install.controller_rbac(SYSTEM)[:3]  # its ServiceAccount, ClusterRole and binding
            for obj in limited:
                obj["metadata"]["name"] = "interstate-limited"
            limited[1]["rules"].append({"apiGroups": [API_GROUP], "resources": ["trafficpolicies"], "verbs": ["watch"]})
            limited[1]["rules"][2]["resources"].remove("trafficpolicies")  # (rule 2: list and watch)
            limited[2]["roleRef"]["name"] = "interstate-limited"
            limited[2]["subjects"][0]["name"] = "interstate-limited"
            for obj in limited:
                create(api, obj)
            controller, core = controller_for(cluster, tmp_path / "two", "interstate-limited")
            await controller.start()
            try:
                problems = await until("a 403", lambda: controller.problems())
                [(path, why)] = problems.items()
                assert path.endswith("/trafficpolicies") and "403" in why and "cannot list" in why, problems
                assert "system:serviceaccount:interstate-system:interstate-limited" in why, why
                await asyncio.sleep(1.0)  # every other collection has been listed by now
                assert controller.pushes == 0 and core.cache.nodes() == []
            finally:
                await controller.stop()

    run(body(), timeout=180)


def test_two_controllers_elect_one_to_write_status_and_the_other_takes_over_from_a_dead_one(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    """Both replicas serve xDS; the Lease holder alone writes status. Stopped as a killed
    replica would be (no release), its Lease is taken over within the lease duration, and the
    survivor writes the next status; its own xDS server never stopped serving."""
    lease = LeaseSettings(SYSTEM, duration_s=3, renew_s=1.0, retry_s=0.25)

    async def body() -> None:
        with cluster.client() as api:
            await installed(api, NAMESPACE)
            workload = {"apiVersion": f"{API_GROUP}/v1", "kind": "Workload"}
            ensure(api, {**workload, "metadata": {"name": "ledger", "namespace": NAMESPACE}, "spec": {"port": 8080}})
            replicas = [
                controller_for(cluster, tmp_path / name, install.CONTROLLER, lease, identity=name)
                for name in ("a", "b")
            ]
            for controller, _ in replicas:
                await controller.start()
            stopped: list[Controller] = []
            try:
                leaders = await until(
                    "one leader", lambda: (found := [c for c, _ in replicas if c.leading]) and len(found) == 1 and found
                )
                [leader] = leaders
                [survivor] = [c for c, _ in replicas if c is not leader]
                holder = api.get(f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM}/leases/{lease.name}").json()
                assert holder["spec"]["holderIdentity"] == leader.settings.identity
                await until("both serving", lambda: all(c.serving.is_set() for c, _ in replicas))
                port = survivor.core.port

                create(api, policy("ledger-breaker", "nobody"))
                await until("Invalid, by the leader", lambda: accepted(api, f"{POLICIES}/ledger-breaker")[0] == "False")

                await leader.stop(release=False)  # as a killed replica: its Lease just stops being renewed
                stopped.append(leader)
                killed = time.monotonic()
                await until("a new leader", lambda: survivor.leading, timeout=lease.duration_s + 5)
                took = time.monotonic() - killed
                assert took <= lease.duration_s + 1.5, took
                fixed = api.patch(
                    f"{POLICIES}/ledger-breaker",
                    json={"spec": {"destination": {"service": "ledger"}}},
                    headers={"content-type": "application/merge-patch+json"},
                )
                assert fixed.status_code == 200, fixed.text
                await until(
                    "Accepted, by the survivor", lambda: accepted(api, f"{POLICIES}/ledger-breaker")[0] == "True"
                )
                assert survivor.serving.is_set() and survivor.core.port == port  # never stopped serving
                holder = api.get(f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM}/leases/{lease.name}").json()
                assert holder["spec"]["holderIdentity"] == survivor.settings.identity
                assert holder["spec"]["leaseTransitions"] >= 1
                print(
                    f"the survivor took the Lease over {took:.1f}s after the leader died (duration {lease.duration_s}s)"
                )
            finally:
                for controller, _ in replicas:
                    if controller not in stopped:
                        await controller.stop()

    run(body(), timeout=120)


def test_interstate_controller_runs_as_its_service_account_from_a_kubeconfig(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    """The `interstate controller` command, a process of its own: from a kubeconfig holding its
    ServiceAccount's token it watches the cluster, serves xDS over TLS, takes the Lease and
    writes status; SIGTERM stops it at once and hands the Lease back."""
    with cluster.client() as api:
        run(installed(api, NAMESPACE), timeout=60)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {"server": cluster.url, "certificate-authority": str(cluster.ca_file)},
                        }
                    ],
                    "users": [{"name": "controller", "user": {"token": cluster.token_for(SYSTEM, install.CONTROLLER)}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "controller"}}],
                    "current-context": "test",
                }
            )
        )
        port = free_port()
        argv = [str(Path(sys.executable).parent / "interstate"), "controller", "--kubeconfig", str(kubeconfig)]
        argv += ["--xds-host", "127.0.0.1", "--xds-port", str(port), "--state-dir", str(tmp_path / "state")]
        argv += ["--identity", "from-the-command"]
        log = (tmp_path / "controller.log").open("wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM}/leases/interstate-controller"
        try:
            create(api, policy("command-probe", "nobody"))

            def holder() -> str:
                found = api.get(lease_path)
                return str(found.json()["spec"].get("holderIdentity") or "") if found.status_code == 200 else ""

            run(until("the Lease", lambda: holder() == "from-the-command", timeout=40), timeout=60)
            run(until("status written", lambda: accepted(api, f"{POLICIES}/command-probe")[0] == "False"), timeout=60)
            secret = api.get(f"/api/v1/namespaces/{SYSTEM}/secrets/interstate-ca")  # the mesh CA, shared
            assert secret.status_code == 200 and secret.json()["type"] == "kubernetes.io/tls", secret.text
            bundle = base64.b64decode(secret.json()["data"]["ca.crt"]).decode()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # xDS: TLS, the mesh CA's
                context = ssl.create_default_context(cadata=bundle)
                context.check_hostname = False
                with context.wrap_socket(raw, server_hostname="xds.interstate") as tls:
                    assert tls.version() == "TLSv1.3"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0, (tmp_path / "controller.log").read_text()[-2000:]
            assert holder() == ""  # handed back: another replica need not wait for it to expire
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def test_the_api_server_refuses_an_invalid_mesh_resource_through_our_validating_webhook(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    """kube-apiserver itself calls the webhook (TLS, our CA in `caBundle`) on every creation and
    update of a mesh resource: one the loader refuses on its own is refused at `kubectl apply`
    with the loader's words; a valid one, or one naming a service that may come later, is let in."""
    authority = Authority.create("fec.gov.local", utcnow())
    issued = authority.issue(
        "spiffe://fec.gov.local/interstate/webhook", timedelta(hours=1), utcnow(), dns_names=("localhost",)
    )
    cert_file, key_file = webhook.write_serving_files(issued, tmp_path / "tls")
    settings = InjectSettings(ca_bundle_pem=authority.bundle_pem, trust_domain="fec.gov.local")
    server = webhook.server(settings, cert_file=cert_file, key_file=key_file, host="127.0.0.1", port=0)
    sock = webhook.bound_socket()
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="webhook", daemon=True)
    thread.start()
    configuration = webhook.validating_webhook_configuration(
        authority.bundle_pem, url=f"https://localhost:{port}{webhook.VALIDATE_PATH}"
    )
    with cluster.client() as api:
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert time.monotonic() < deadline, "the webhook did not start"
                time.sleep(0.02)
            run(installed(api, NAMESPACE), timeout=60)
            create(api, configuration)
            unbounded = policy("unbounded-retries", "stats")
            unbounded["spec"]["retries"] = {"attempts": 3}  # valid to the CRD schema, not to the mesh

            def refused() -> str | None:  # the configuration takes a moment to reach the API server
                answer = api.post(collection(unbounded), json=unbounded)
                if answer.status_code == 201:
                    api.delete(f"{POLICIES}/unbounded-retries")
                    return None
                assert answer.status_code == 400, answer.text
                message: str = answer.json()["message"]
                return message

            why = run(until("the webhook to refuse", refused), timeout=60)
            assert 'admission webhook "validate.mesh.codifyhq.io" denied the request' in why, why
            assert "spec.retries.perTryTimeout" in why and "retries need a bound" in why, why
            create(api, policy("later-service", "not-yet-created"))  # a reference: the controller's to judge
            good = policy("bounded-retries", "stats")
            good["spec"]["retries"] = {"attempts": 3, "perTryTimeout": "2s"}
            create(api, good)
        finally:
            api.delete(
                f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{configuration['metadata']['name']}"
            )
            server.should_exit = True
            thread.join(10)
            sock.close()


def test_a_controller_limited_to_namespaces_reads_only_theirs(cluster: ControlPlane, tmp_path: Path) -> None:
    """`interstate controller --namespace elections`: one list/watch per namespace for namespaced
    kinds (the Mesh stays cluster-wide); a TrafficPolicy in another namespace is not read."""

    async def body() -> None:
        with cluster.client() as api:
            await installed(api, NAMESPACE, "staging")
            workload = {"apiVersion": f"{API_GROUP}/v1", "kind": "Workload"}
            ensure(api, {**workload, "metadata": {"name": "tally", "namespace": NAMESPACE}, "spec": {"port": 8080}})
            ensure(api, {**workload, "metadata": {"name": "draft", "namespace": "staging"}, "spec": {"port": 8080}})
            controller, _ = controller_for(cluster, tmp_path, install.CONTROLLER, namespaces=(NAMESPACE,))
            await controller.start()
            try:
                config = await until("the config", lambda: controller.config)
                workloads = MeshIndex(config).workloads
                assert "tally" in workloads and "draft" not in workloads, sorted(workloads)
                watched = set(controller.collections())
                assert f"/api/v1/namespaces/{NAMESPACE}/pods" in watched and "/api/v1/pods" not in watched
                assert f"/apis/{API_GROUP}/v1/meshes" in watched  # cluster-scoped: all of it
            finally:
                await controller.stop()

    run(body(), timeout=120)


def test_every_replica_signs_with_the_one_ca_of_a_secret_the_operators_own_if_given(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    """Two replicas with separate state folders sign with the CA of one Secret, so side-cars on
    either trust each other; an operator's own CA Secret (cert-manager's layout) is used as given."""
    secret = ("interstate-system", "mesh-ca-test")
    operator = ("interstate-system", "operator-ca")

    async def body() -> None:
        with cluster.client() as api:
            await installed(api, NAMESPACE)
            own = Authority.create("fec.gov.local", utcnow())
            data = {"tls.crt": own.signing_pem, "tls.key": own.key_pem, "ca.crt": own.bundle_pem}
            ensure(
                api,
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "kubernetes.io/tls",
                    "metadata": {"name": operator[1], "namespace": operator[0]},
                    "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
                },
            )
            fingerprints = {}
            for name, which in (("a", secret), ("b", secret), ("c", operator)):
                controller, core = controller_for(
                    cluster, tmp_path / name, install.CONTROLLER, identity=name, ca_secret=which
                )
                await controller.start()
                try:
                    await until(f"{name} serving", lambda c=controller: c.serving.is_set())
                    assert core.identity is not None
                    fingerprints[name] = core.identity.authority.fingerprint
                finally:
                    await controller.stop()
            assert fingerprints["a"] == fingerprints["b"]  # the second replica read the first one's
            assert fingerprints["c"] == own.fingerprint != fingerprints["a"]
            created = api.get(f"/api/v1/namespaces/{secret[0]}/secrets/{secret[1]}").json()
            assert created["type"] == "kubernetes.io/tls" and set(created["data"]) == {"tls.crt", "tls.key", "ca.crt"}

    run(body(), timeout=120)
