"""End to end: fake kube-apiserver -> kube.controller -> the core (ControlPlane) -> real Envoys run
as injected pods' side-cars.

The cluster (tests/helpers_kube.py, real HTTPS on 127.0.0.1) holds a Mesh CR (trust domain
`fec.gov.local`, policy header `x-fec-policy`), three Workload CRs (`results` calls `stats` and
`archive`; `archive` runs without side-car), two pods made by the real injector (`kube.inject`)
with pod IPs 127.0.0.2 (`results`) and 127.0.0.3 (`stats`), EndpointSlices for `stats` (its pod)
and `archive` (an upstream the test starts), and the pods' service-account tokens, which the fake
answers TokenReviews for. Each side-car is a real Envoy started from its pod's own
`interstate-proxy` arguments: Google gRPC over TLS to the controller's ADS, its token as bearer.

What it shows: the controller starts ADS once the Mesh is known; a request from `results`' app
reaches `stats`' app through both side-cars over mutual TLS (the callee sees the caller's SPIFFE ID,
both Envoys count a TLS handshake, plaintext to the callee's side-car is refused, the callee's
certificate is the SVID the core issued from the mesh CA); side-cars whose token does not prove
their node get nothing and are counted; then the controller's habits: a burst of MODIFIED slices
is one push, an invalid TrafficPolicy (or a trust-domain change) is refused while traffic flows,
and a deleted pod's snapshot goes. No kube-apiserver exists on this machine: the fake speaks its
list/watch and TokenReview protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
from cryptography import x509
from helpers_kube import TOKEN, ServiceAccountToken, fake_apiserver, injected_envoy
from helpers_xds import EnvoyProcess, free_port, metric, run, upstream, wait_until

from interstate.ca.authority import Authority, utcnow
from interstate.core.identity import IdentitySettings
from interstate.core.plane import ControlPlane
from interstate.core.status import ReplicaState, to_json
from interstate.kube import inject
from interstate.kube.bootstrap import ProxyPorts
from interstate.kube.controller import ENDPOINT_SLICES, PODS, Controller, ControllerSettings
from interstate.kube.inject import InjectSettings
from interstate.kube.watch import ApiSettings
from interstate.xds import resources as rt

pytestmark = pytest.mark.e2e

MESHES = "/apis/mesh.codifyhq.io/v1/meshes"
WORKLOADS = "/apis/mesh.codifyhq.io/v1/workloads"
POLICIES = "/apis/mesh.codifyhq.io/v1/trafficpolicies"
TRUST_DOMAIN = "fec.gov.local"
POLICY_HEADER = "x-fec-policy"
NAMESPACE = "elections"
RESULTS_POD, RESULTS_IP = "results-5f7d8-x2x9q", "127.0.0.2"
STATS_POD, STATS_IP = "stats-6d9f7c-abcde", "127.0.0.3"
RESULTS_NODE = f"sidecar~{RESULTS_POD}.{NAMESPACE}"
STATS_NODE = f"sidecar~{STATS_POD}.{NAMESPACE}"


def mesh(trust_domain: str = TRUST_DOMAIN) -> dict[str, Any]:
    spec = {"trustDomain": trust_domain, "policyHeader": POLICY_HEADER}
    return {"apiVersion": "mesh.codifyhq.io/v1", "kind": "Mesh", "metadata": {"name": "fec"}, "spec": spec}


def workload(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "annotations": annotations or {}}
    return {"apiVersion": "mesh.codifyhq.io/v1", "kind": "Workload", "metadata": metadata, "spec": spec}


def endpoint_slice(service: str, address: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-7xk2p",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def injected_pod(name: str, service: str, app_port: int, pod_ip: str, settings: InjectSettings) -> dict[str, Any]:
    """A Deployment's pod as the webhook admits it (the real `inject` patch applied), scheduled."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": service}},
        "spec": {
            "serviceAccountName": service,
            "containers": [
                {
                    "name": service,
                    "image": "registry.example.invalid/app:1",
                    "ports": [{"name": "http", "containerPort": app_port, "protocol": "TCP"}],
                }
            ],
        },
    }
    patch, report = inject.inject(
        pod, settings, namespace=NAMESPACE, namespace_labels={inject.INJECT_ANNOTATION: "enabled"}
    )
    assert report.injected, report
    pod = jsonpatch.apply_patch(pod, patch)
    pod["status"] = {
        "phase": "Running",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return pod


async def served_by(http: httpx.AsyncClient, url: str = "http://archive:8080/results/today") -> str:
    response = await http.get(url)
    assert response.status_code == 200, response.text
    server: str = response.json()["server"]
    return server


async def is_ready(envoy: EnvoyProcess) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(f"{envoy.admin}/ready")).status_code == 200
    return False


async def wait_ready(envoy: EnvoyProcess, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await is_ready(envoy):
        assert loop.time() < deadline, f"envoy not ready:\n{envoy.log_tail()}"
        await asyncio.sleep(0.1)


def test_injected_side_cars_get_svids_from_the_controller_and_talk_mutual_tls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="interstate.xds.server")

    async def body() -> None:
        # The mesh CA exists before any pod (the webhook puts its bundle in every side-car).
        authority = Authority.load_or_create(tmp_path / "ca", TRUST_DOMAIN, utcnow())
        xds_port, inbound = free_port(), free_port()

        def injector() -> InjectSettings:
            """Each pod has its own loopback; on this one machine its side-car gets its own ports,
            except the inbound one, which pods reach at their pod IP."""
            ports = ProxyPorts(admin=free_port(), outbound=free_port(), inbound=inbound, ready=free_port())
            return InjectSettings(
                ca_bundle_pem=authority.bundle_pem,
                trust_domain=TRUST_DOMAIN,
                xds_address=f"127.0.0.1:{xds_port}",
                policy_header=POLICY_HEADER,
                ports=ports,
            )

        def token_file(name: str, token: str) -> Path:
            path = tmp_path / f"{name}.token"
            path.write_text(token)
            return path

        results_settings = injector()
        with upstream("stats-app") as stats_app, upstream("archive-a") as port_a, upstream("archive-b") as port_b:
            results = injected_pod(RESULTS_POD, "results", free_port(), RESULTS_IP, results_settings)
            stats = injected_pod(STATS_POD, "stats", stats_app, STATS_IP, injector())
            async with fake_apiserver(tmp_path) as api:
                api.put(MESHES, mesh())
                api.put(
                    WORKLOADS,
                    workload(
                        "results",
                        {"port": 8080, "calls": ["stats", "archive"]},
                        {"mesh.codifyhq.io/policy": "FEC-F101"},
                    ),
                )
                api.put(WORKLOADS, workload("stats", {"port": 8080}))
                api.put(WORKLOADS, workload("archive", {"port": 8080}, {"mesh.codifyhq.io/inject": "disabled"}))
                api.put(ENDPOINT_SLICES.path, endpoint_slice("stats", STATS_IP, 8080))
                api.put(ENDPOINT_SLICES.path, endpoint_slice("archive", "127.0.0.1", port_a))
                api.put(PODS.path, results)
                api.put(PODS.path, stats)
                api.tokens["results-pod-token"] = ServiceAccountToken(NAMESPACE, "results", RESULTS_POD)
                api.tokens["stats-pod-token"] = ServiceAccountToken(NAMESPACE, "stats", STATS_POD)

                core = ControlPlane(IdentitySettings(tmp_path / "certs", tmp_path / "ca"), tmp_path / "audit.jsonl")
                settings = ControllerSettings(
                    ApiSettings(api.url, token=TOKEN, ca_file=api.ca_file),
                    ProxyPorts(inbound=inbound),
                    xds_host="127.0.0.1",
                    xds_port=xds_port,
                )
                controller = Controller(settings, core)
                await controller.start()
                try:
                    await asyncio.wait_for(controller.serving.wait(), 10)
                    assert core.identity is not None and core.identity.trust_domain == TRUST_DOMAIN
                    assert await wait_until(lambda: core.cache.get(STATS_NODE) is not None, 10), controller.rejected
                    async with (
                        injected_envoy(tmp_path, stats, token_file("stats", "stats-pod-token")) as callee,
                        injected_envoy(tmp_path, results, token_file("results", "results-pod-token")) as caller,
                    ):
                        await wait_ready(callee)
                        await wait_ready(caller)
                        for type_url in rt.ORDER:
                            assert await core.wait_acked([RESULTS_NODE, STATS_NODE], type_url, 10), core.ads.status()
                        assert set(core.ads.status()) == {RESULTS_NODE, STATS_NODE}

                        outbound = f"http://127.0.0.1:{results_settings.ports.outbound}"  # results' HTTP_PROXY
                        async with httpx.AsyncClient(proxy=outbound, timeout=5) as http:
                            # results' app -> its side-car -> mTLS -> stats' side-car -> stats' app
                            response = await http.get("http://stats:8080/tallies/today")
                            assert response.status_code == 200, response.text
                            seen = response.json()
                            assert seen["server"] == "stats-app"
                            # the callee's side-car says who called, from the client certificate
                            assert (
                                f"URI=spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/results"
                                in seen["headers"]["x-forwarded-client-cert"]
                            )
                            # the Mesh CR's policy header, stamped by the caller's side-car
                            assert seen["headers"][POLICY_HEADER] == "FEC-F101"

                            # status comes from the core, as in standalone mode: pods as replicas,
                            # their side-cars' xDS sync, and what results' side-car saw of stats
                            status = controller.status()
                            [stats_replica] = status.services["stats"].replicas
                            assert (stats_replica.name, stats_replica.state) == (STATS_POD, ReplicaState.READY)
                            assert stats_replica.sidecar is not None and stats_replica.sidecar.node == STATS_NODE
                            assert stats_replica.xds is not None and stats_replica.xds.streams >= 1
                            assert status.services["stats"].ready == 1 and status.services["results"].ready == 1
                            assert status.services["results"].policy == "FEC-F101"
                            seen_of_stats = (await controller.resilience())["stats"]
                            assert seen_of_stats.callers == [RESULTS_NODE]
                            assert seen_of_stats.counters["requests"] >= 1, seen_of_stats
                            assert json.dumps(to_json(status.with_resilience({"stats": seen_of_stats})))

                            inbound_stats = await callee.stats(rf"^listener\.{STATS_IP}_{inbound}\.ssl\.")
                            assert inbound_stats[f"listener.{STATS_IP}_{inbound}.ssl.handshake"] >= 1, inbound_stats
                            outbound_stats = await caller.stats(r"^cluster\.outbound\|stats\.ssl\.handshake$")
                            assert outbound_stats["cluster.outbound|stats.ssl.handshake"] >= 1, outbound_stats
                            # the hop cannot be taken in plaintext
                            with pytest.raises(httpx.HTTPError):
                                async with httpx.AsyncClient(timeout=3) as plain:
                                    await plain.get(f"http://{STATS_IP}:{inbound}/tallies/today")

                            # the callee's certificate: the SVID the core issued, from the mesh CA
                            async with httpx.AsyncClient(timeout=5) as admin:
                                certs = (await admin.get(f"{callee.admin}/certs")).json()["certificates"]
                            issued = dict(core.identity.certs.items())[STATS_NODE]
                            root = x509.load_pem_x509_certificate(authority.bundle_pem.encode())
                            [svid] = [c for entry in certs for c in entry["cert_chain"]]
                            [ca] = [c for entry in certs for c in entry["ca_cert"]]
                            assert [s["uri"] for s in svid["subject_alt_names"]] == [
                                f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/stats"
                            ]
                            assert int(svid["serial_number"], 16) == issued.serial
                            assert int(ca["serial_number"], 16) == root.serial_number

                            # side-cars whose token does not prove the node they claim get nothing
                            refused_before = metric(core.ads, "interstate_xds_refused_streams_total")
                            async with contextlib.AsyncExitStack() as impostors:
                                tries = {
                                    "stolen": token_file("stolen", "stats-pod-token"),  # another pod's
                                    "forged": token_file("forged", "forged.jwt.token"),  # not authenticated
                                    "none": None,  # no token at all
                                }
                                envoys = {
                                    name: await impostors.enter_async_context(
                                        injected_envoy(
                                            tmp_path,
                                            injected_pod(RESULTS_POD, "results", free_port(), RESULTS_IP, injector()),
                                            path,
                                            name=f"impostor-{name}",
                                        )
                                    )
                                    for name, path in tries.items()
                                }
                                reasons = (
                                    "is not the token's pod",
                                    "did not authenticate the token",
                                    "no bearer token",
                                )
                                assert await wait_until(lambda: all(r in caplog.text for r in reasons), 20), caplog.text
                                assert metric(core.ads, "interstate_xds_refused_streams_total") >= refused_before + 3
                                for name, envoy in envoys.items():
                                    updates = await envoy.stats(r"(cds|lds)\.update_success$")
                                    assert not any(updates.values()), (name, updates)
                                    assert not await is_ready(envoy), name
                                assert "stats-pod-token" not in caplog.text and "forged.jwt.token" not in caplog.text
                            assert await served_by(http, "http://stats:8080/") == "stats-app"  # unaffected

                            # the archive's EndpointSlice moves (a burst of 5 changes: one debounced
                            # push), and the request follows
                            assert await served_by(http) == "archive-a"
                            pushes = controller.pushes
                            for port in (port_a, free_port(), port_a, free_port(), port_b):
                                api.emit(ENDPOINT_SLICES.path, "MODIFIED", endpoint_slice("archive", "127.0.0.1", port))
                            assert await wait_until(lambda: controller.pushes > pushes, 5)
                            await asyncio.sleep(0.2)  # nothing more comes: the burst was one push
                            assert controller.pushes == pushes + 1
                            assert await _eventually(http, "archive-b")

                            # an invalid CR: logged, held in `rejected`, the last good config stays
                            bad: dict[str, Any] = {
                                "apiVersion": "mesh.codifyhq.io/v1",
                                "kind": "TrafficPolicy",
                                "metadata": {"name": "stats-breaker", "namespace": NAMESPACE},
                                "spec": {"destination": {"service": "stats"}, "timeout": "3x"},
                            }
                            api.emit(POLICIES, "ADDED", bad)
                            assert await wait_until(lambda: bool(controller.rejected), 5)
                            [issue] = controller.rejected
                            assert (issue.file, issue.field) == (f"{NAMESPACE}/stats-breaker", "spec.timeout")
                            assert await served_by(http) == "archive-b"

                            # fixed: taken, and traffic still flows
                            good = copy.deepcopy(bad)
                            good["spec"]["timeout"] = "3s"
                            api.emit(POLICIES, "MODIFIED", good)
                            assert await wait_until(lambda: not controller.rejected, 5)
                            assert controller.config is not None
                            assert "TrafficPolicy stats-breaker" in {r.ref for r in controller.config.resources}
                            assert await served_by(http, "http://stats:8080/") == "stats-app"

                            # the trust domain cannot change under running side-cars: refused likewise
                            api.emit(MESHES, "MODIFIED", mesh("other.local"))
                            assert await wait_until(lambda: bool(controller.rejected), 5)
                            [issue] = controller.rejected
                            assert (issue.file, issue.resource, issue.field) == ("fec", "Mesh fec", "spec.trustDomain")
                            assert await served_by(http, "http://stats:8080/") == "stats-app"
                            api.emit(MESHES, "MODIFIED", mesh())
                            assert await wait_until(lambda: not controller.rejected, 5)

                            # the stats pod goes away: its snapshot and certificate are removed
                            api.emit(PODS.path, "DELETED", stats)
                            assert await wait_until(lambda: core.cache.get(STATS_NODE) is None, 5)
                            assert STATS_NODE not in dict(core.identity.certs.items())
                            assert core.cache.get(RESULTS_NODE) is not None
                finally:
                    await controller.stop()

    run(body(), timeout=120)


async def _eventually(http: httpx.AsyncClient, server: str, timeout: float = 5.0) -> bool:
    """True once a request is served by `server` (Envoy applies EDS a moment after the push)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await served_by(http) == server:
            return True
    return False


def test_the_xds_server_waits_for_a_valid_config_with_a_mesh_and_retries_a_busy_port(tmp_path: Path) -> None:
    async def body() -> None:
        async with fake_apiserver(tmp_path) as api:
            broken = workload("results", {"port": "eighty"})
            api.put(WORKLOADS, broken)
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            xds_port = int(busy.getsockname()[1])
            core = ControlPlane(IdentitySettings(tmp_path / "certs", tmp_path / "ca"), tmp_path / "audit.jsonl")
            settings = ControllerSettings(
                ApiSettings(api.url, token=TOKEN, ca_file=api.ca_file),
                xds_host="127.0.0.1",
                xds_port=xds_port,
                retry_s=0.05,
            )
            controller = Controller(settings, core)
            await controller.start()
            try:
                # no valid config: no trust domain to issue certificates for, so no xDS server
                assert await wait_until(lambda: bool(controller.rejected), 5)
                assert not controller.serving.is_set() and core.identity is None

                # valid now, but no Mesh resource says the trust domain: still no xDS server
                api.emit(WORKLOADS, "MODIFIED", workload("results", {"port": 8080}))
                assert await wait_until(lambda: "mesh" in controller.problems(), 5), controller.problems()
                assert not controller.serving.is_set() and core.identity is None

                # a Mesh, but the port is taken: retried (with back-off) until it is free
                api.emit(MESHES, "ADDED", mesh())
                assert await wait_until(lambda: core.identity is not None, 5)
                assert not controller.serving.is_set()
                busy.close()
                await asyncio.wait_for(controller.serving.wait(), 10)
                assert core.port == xds_port and controller.pushes >= 1
                assert core.identity is not None and core.identity.trust_domain == TRUST_DOMAIN
                assert controller.problems() == {}
            finally:
                busy.close()
                await controller.stop()

    run(body(), timeout=30)


@pytest.mark.slow
def test_a_side_car_that_gets_no_configuration_never_turns_ready(tmp_path: Path) -> None:
    """Defect of issue 24: without `initial_fetch_timeout: 0s` Envoy gave up waiting for xDS
    after 15 s for clusters and 15 s more for listeners, went LIVE with none, and `/ready` said
    200 at about 30 s, so the pod turned Ready and callers were sent to a dead port. Here nothing
    answers at the xDS address: past those 30 s the side-car is still initializing, not ready."""

    async def body() -> None:
        authority = Authority.load_or_create(tmp_path / "ca", TRUST_DOMAIN, utcnow())
        ports = ProxyPorts(admin=free_port(), outbound=free_port(), inbound=free_port(), ready=free_port())
        settings = InjectSettings(
            ca_bundle_pem=authority.bundle_pem,
            trust_domain=TRUST_DOMAIN,
            xds_address=f"127.0.0.1:{free_port()}",  # nobody listens there
            policy_header=POLICY_HEADER,
            ports=ports,
        )
        pod = injected_pod(STATS_POD, "stats", free_port(), STATS_IP, settings)
        token = tmp_path / "token"
        token.write_text("stats-pod-token")
        async with injected_envoy(tmp_path, pod, token) as envoy, httpx.AsyncClient(timeout=2) as admin:
            deadline = asyncio.get_running_loop().time() + 33  # Envoy's defaults: ready at ~30 s
            while asyncio.get_running_loop().time() < deadline:
                assert not await is_ready(envoy), "a side-car without configuration said it was ready"
                await asyncio.sleep(0.5)
            state = (await admin.get(f"{envoy.admin}/server_info")).json()["state"]
            assert state in ("PRE_INITIALIZING", "INITIALIZING"), state

    run(body(), timeout=90)
