"""Kubernetes mode: a workload's identity goes to the workload's own service account, never to a
pod that only carries its label.

The cluster is the fake kube-apiserver of tests/helpers_kube.py (real HTTPS on 127.0.0.1), holding
a Mesh (trust domain `fec.gov.local`), the Workloads `results` and `stats` in namespace
`elections`, and pods made by the real injector. Besides the honest pods (`results` running as
service account elections/results, `stats` as elections/stats) there are three impostors
labelled `app: results`:

- `intruder`: runs as service account elections/intruder, and its token says so;
- `elsewhere`: runs as service account `results`, but in namespace `intruders`;
- `forged`: its pod object says elections/results, but its token reviews as elections/intruder.
  The API server never answers so (a pod's token is its own service account's); the fake can,
  which shows the stream check on its own: the core holds a `results` certificate for this node,
  and the stream still gets nothing.

The first test drives the controller's ADS server with scripted gRPC streams (fast); the second
runs real Envoys from the pods' own `interstate-proxy` arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from helpers_kube import (
    TOKEN,
    FakeApiServer,
    ServiceAccountToken,
    TokenAdsClient,
    fake_apiserver,
    injected_envoy,
    injected_pod,
)
from helpers_xds import free_port, metric, run, wait_until

from interstate import audit
from interstate.ca.authority import Authority, utcnow
from interstate.core.identity import IdentitySettings
from interstate.core.plane import ControlPlane
from interstate.kube.bootstrap import ProxyPorts
from interstate.kube.controller import PODS, Controller, ControllerSettings
from interstate.kube.inject import InjectSettings
from interstate.kube.watch import ApiSettings
from interstate.xds import resources as rt

MESHES = "/apis/mesh.codifyhq.io/v1/meshes"
WORKLOADS = "/apis/mesh.codifyhq.io/v1/workloads"
TD = "fec.gov.local"
NAMESPACE = "elections"
RESULTS_ID = f"spiffe://{TD}/ns/{NAMESPACE}/sa/results"  # who may have results' identity
RESULTS_SVID = RESULTS_ID  # the SVID URI its certificate names and every caller's side-car checks


@dataclass(frozen=True)
class Pod:
    name: str
    service: str
    namespace: str
    service_account: str  # what the pod object says
    token: ServiceAccountToken  # what its token reviews as
    ip: str

    @property
    def node(self) -> str:
        return f"sidecar~{self.name}.{self.namespace}"


def pod(name: str, namespace: str, account: str, ip: str, token_account: str | None = None) -> Pod:
    service = name.split("-")[0]
    token = ServiceAccountToken(namespace, token_account or account, name)
    return Pod(name, service, namespace, account, token, ip)


HONEST = pod("results-honest", NAMESPACE, "results", "127.0.0.2")
STATS = pod("stats-honest", NAMESPACE, "stats", "127.0.0.3")
INTRUDER = pod("results-intruder", NAMESPACE, "intruder", "127.0.0.4")
ELSEWHERE = pod("results-elsewhere", "intruders", "results", "127.0.0.5")
FORGED = pod("results-forged", NAMESPACE, "results", "127.0.0.6", token_account="intruder")
IMPOSTORS = (INTRUDER, ELSEWHERE, FORGED)


def token_says(p: Pod) -> str:
    return f"service account {p.token.service_account!r} in namespace {p.token.namespace!r}"


def custom_resources() -> list[dict[str, Any]]:
    mesh = {
        "apiVersion": "mesh.codifyhq.io/v1",
        "kind": "Mesh",
        "metadata": {"name": "fec"},
        "spec": {"trustDomain": TD},
    }
    workloads = [
        {
            "apiVersion": "mesh.codifyhq.io/v1",
            "kind": "Workload",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"port": 8080, "calls": calls},
        }
        for name, calls in (("results", ["stats"]), ("stats", []))
    ]
    return [mesh, *workloads]


@dataclass
class Cluster:
    api: FakeApiServer
    core: ControlPlane
    controller: Controller
    pods: dict[str, dict[str, Any]]  # by name, as the API server holds them
    tokens: dict[str, Path]  # by pod name: its projected token file

    @property
    def bundle(self) -> str:
        assert self.core.identity is not None
        return self.core.identity.authority.bundle_pem

    def issued(self) -> dict[str, str]:
        """{node: SPIFFE ID} of every certificate the core holds."""
        assert self.core.identity is not None
        return {node: cert.identity for node, cert in self.core.identity.certs.items()}


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, pods: tuple[Pod, ...]) -> AsyncIterator[Cluster]:
    """The fake cluster with `pods` and their tokens, and a running controller and core."""
    authority = Authority.load_or_create(tmp_path / "ca", TD, utcnow())  # before any pod: the webhook's
    xds_port, inbound = free_port(), free_port()
    async with fake_apiserver(tmp_path) as api:
        for obj in custom_resources():
            api.put(MESHES if obj["kind"] == "Mesh" else WORKLOADS, obj)
        made: dict[str, dict[str, Any]] = {}
        tokens: dict[str, Path] = {}
        for p in pods:
            # one machine, many pods: each side-car its own ports, but the inbound one (at the pod IP)
            ports = ProxyPorts(admin=free_port(), outbound=free_port(), inbound=inbound, ready=free_port())
            injector = InjectSettings(
                ca_bundle_pem=authority.bundle_pem, trust_domain=TD, xds_address=f"127.0.0.1:{xds_port}", ports=ports
            )
            made[p.name] = injected_pod(
                p.name,
                p.service,
                injector,
                namespace=p.namespace,
                service_account=p.service_account,
                pod_ip=p.ip,
                app_port=free_port(),
            )
            api.put(PODS.path, made[p.name])
            api.tokens[f"{p.name}-token"] = p.token
            tokens[p.name] = tmp_path / f"{p.name}.token"
            tokens[p.name].write_text(f"{p.name}-token")
        core = ControlPlane(IdentitySettings(tmp_path / "certs", tmp_path / "ca"), tmp_path / "audit.jsonl")
        api_settings = ApiSettings(api.url, token=TOKEN, ca_file=api.ca_file)
        settings = ControllerSettings(
            api_settings, ProxyPorts(inbound=inbound), xds_host="127.0.0.1", xds_port=xds_port
        )
        controller = Controller(settings, core)
        await controller.start()
        try:
            await asyncio.wait_for(controller.serving.wait(), 10)
            assert await wait_until(lambda: controller.pushes >= 1, 10), controller.rejected
            yield Cluster(api, core, controller, made, tokens)
        finally:
            await controller.stop()


def stream(c: Cluster, p: Pod, token: str | None = None) -> TokenAdsClient:
    client = TokenAdsClient(c.core.port, p.node)
    client.bundle_pem, client.token = c.bundle, token or f"{p.name}-token"
    return client


def svid_uri(response: Any) -> str:
    """The URI SAN of the certificate in an SDS response."""
    secrets = [secret_pb2.Secret.FromString(r.value) for r in response.resources]
    [chain] = [s.tls_certificate.certificate_chain.inline_string for s in secrets if s.HasField("tls_certificate")]
    cert = x509.load_pem_x509_certificate(chain.encode())
    [uri] = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    return str(uri)


def refusals(c: Cluster) -> float:
    return metric(c.core.ads, "interstate_xds_identity_refusals_total")


def sent(c: Cluster) -> float:
    """Every xDS response the core has sent, all types and nodes together."""
    return sum(metric(c.core.ads, "interstate_xds_pushes_total", type=short) for short in rt.SHORT.values())


def test_a_workloads_identity_goes_to_its_own_service_account_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="interstate.kube.controller")

    async def body() -> None:
        async with cluster(tmp_path, (HONEST, STATS, *IMPOSTORS)) as c:
            # certificates exist for the pods whose service account is their workload's only
            # (`forged`'s pod object says elections/results; its token will disagree)
            assert c.issued() == {
                HONEST.node: RESULTS_SVID,
                STATS.node: f"spiffe://{TD}/ns/{NAMESPACE}/sa/stats",
                FORGED.node: RESULTS_SVID,
            }
            for p in (INTRUDER, ELSEWHERE):  # logged once, with why, before any side-car connects
                assert caplog.text.count(f"side-car {p.node} gets no configuration and no certificate") == 1

            async with stream(c, HONEST) as honest:
                await honest.send(rt.SECRET, names=["default", "ROOTCA"])
                assert svid_uri(await honest.recv(5)) == RESULTS_SVID
            before = sent(c)

            for p in IMPOSTORS:
                async with stream(c, p) as impostor:
                    await impostor.send(rt.SECRET, names=["default", "ROOTCA"])
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await impostor.recv(5)  # aborted before anything was sent
                details = str(refused.value.details())
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, details
                # names the node, who may have the workload's identity, and what the token proves
                assert f"node {p.node!r} claims workload 'results'" in details, details
                assert f"only service account 'results' in namespace 'elections' ({RESULTS_ID})" in details
                assert f"its token is {token_says(p)}" in details
                assert f"{p.name}-token" not in details and f"{p.name}-token" not in caplog.text
                assert f"refused a side-car a workload identity its token does not prove: {details}" in caplog.text
            assert refusals(c) == 3
            assert sent(c) == before  # not one response (let alone a secret) to any impostor
            # the audit trail names each impostor once (Envoy retries; the trail is not flooded)
            async with stream(c, INTRUDER) as again:
                await again.send(rt.SECRET, names=["default"])
                with pytest.raises(grpc.aio.AioRpcError):
                    await again.recv(5)
            trail = [r for r in audit.read(c.core.audit.path) if r["action"] == "xds.identity.refused"]
            assert sorted(r["target"][0] for r in trail) == sorted(p.node for p in IMPOSTORS)
            assert all(r["outcome"] == "refused" and "token" not in r["actor"] for r in trail)

            # a node no pod has been matched to yet is not refused but not served either: UNAVAILABLE
            c.api.tokens["early-token"] = ServiceAccountToken(NAMESPACE, "results", "results-early")
            early = pod("results-early", NAMESPACE, "results", "127.0.0.7")
            async with stream(c, early, "early-token") as client:
                await client.send(rt.SECRET, names=["default"])
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await client.recv(5)
            assert unknown.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "is not known yet" in str(unknown.value.details())

            # labels change, service accounts do not: stats' pod relabelled as results loses its
            # side-car's configuration, and its open stream gets no results certificate
            async with stream(c, STATS) as stats:
                await stats.send(rt.SECRET, names=["default", "ROOTCA"])
                response = await stats.recv(5)
                assert svid_uri(response) == f"spiffe://{TD}/ns/{NAMESPACE}/sa/stats"
                await stats.ack(response, names=["default", "ROOTCA"])
                relabelled = {**c.pods[STATS.name], "metadata": {**c.pods[STATS.name]["metadata"]}}
                relabelled["metadata"]["labels"] = {"app": "results"}
                c.api.emit(PODS.path, "MODIFIED", relabelled)
                assert await wait_until(lambda: c.core.cache.get(STATS.node) is None, 5)
                await stats.expect_nothing(0.5)
            assert STATS.node not in c.issued()
            assert (
                "stats-honest.elections gets no configuration and no certificate: labelled as workload 'results'"
                in (caplog.text)
            )

    run(body(), timeout=60)


# ---- the same with real Envoys ------------------------------------------------------------------


async def envoy_secrets(admin: str) -> tuple[list[Any], dict[str, Any]]:
    """What an Envoy holds: its /certs, and the secrets and clusters of its /config_dump."""
    async with httpx.AsyncClient(timeout=5) as client:
        certs = (await client.get(f"{admin}/certs")).json()["certificates"]
        dump = (await client.get(f"{admin}/config_dump")).json()["configs"]
    by_type = {config["@type"].rsplit(".", 1)[-1]: config for config in dump}
    return certs, by_type


async def is_ready(admin: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(f"{admin}/ready")).status_code == 200
    return False


async def wait_until_ready(admin: str, timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await is_ready(admin):
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


@pytest.mark.e2e
def test_impostor_side_cars_get_no_certificate_from_the_controller_and_the_honest_one_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="interstate.kube.controller")
    caplog.set_level(logging.INFO, logger="interstate.xds.server")  # "ADS stream opened: <node>"

    async def body() -> None:
        async with cluster(tmp_path, (HONEST, *IMPOSTORS)) as c, contextlib.AsyncExitStack() as envoys:
            honest = await envoys.enter_async_context(
                injected_envoy(tmp_path, c.pods[HONEST.name], c.tokens[HONEST.name])
            )
            # the honest side-car is ready (it has its listeners, routes, clusters, endpoints and
            # secrets) and has ACKed every type: from here on nothing more is sent to it
            assert await wait_until_ready(honest.admin, 20), honest.log_tail()
            for type_url in rt.ORDER:
                assert await c.core.wait_acked([HONEST.node], type_url, 20), c.core.ads.status()
            assert f"ADS stream opened: {HONEST.node}" in caplog.text
            before = sent(c)
            impostors = {
                p.name: await envoys.enter_async_context(injected_envoy(tmp_path, c.pods[p.name], c.tokens[p.name]))
                for p in IMPOSTORS
            }
            # each impostor Envoy connects and is refused (and retries, and is refused again)
            assert await wait_until(lambda: all(f"node {p.node!r} claims" in caplog.text for p in IMPOSTORS), 20), (
                caplog.text
            )
            assert refusals(c) >= 3
            # the server sent them nothing at all: no stream ever became theirs (the server sends
            # only on a stream it has opened for a node), and no response went out meanwhile
            assert not [p.node for p in IMPOSTORS if f"ADS stream opened: {p.node}" in caplog.text]
            assert not {p.node for p in IMPOSTORS} & c.core.ads.connected_nodes()
            assert sent(c) == before

            for p in IMPOSTORS:
                envoy = impostors[p.name]
                certs, dump = await envoy_secrets(envoy.admin)
                assert certs == [], (p.name, certs)
                secrets = dump.get("SecretsConfigDump", {})
                assert not secrets.get("dynamic_active_secrets") and not secrets.get("dynamic_warming_secrets"), secrets
                assert not dump.get("ClustersConfigDump", {}).get("dynamic_active_clusters"), p.name
                updates = await envoy.stats(r"(cds|lds)\.update_success$")
                assert not any(updates.values()), (p.name, updates)
                assert not await is_ready(envoy.admin), p.name

            # the honest side-car holds results' SVID, the one the core issued to its node
            certs, _ = await envoy_secrets(honest.admin)
            svids = [cert for entry in certs for cert in entry["cert_chain"]]  # one per TLS context using it
            assert svids and {san["uri"] for svid in svids for san in svid["subject_alt_names"]} == {RESULTS_SVID}
            issued = dict(c.core.identity.certs.items()) if c.core.identity else {}
            assert {int(svid["serial_number"], 16) for svid in svids} == {issued[HONEST.node].serial}

    run(body(), timeout=90)


def test_a_token_of_an_earlier_pod_of_the_same_name_is_refused(tmp_path: Path) -> None:
    """Defect of issue 24: the TokenReview's `pod-uid` extra was never compared with the watched
    pod, so the token of a deleted pod served a new pod that took its name (a StatefulSet's).
    The pod object now carries another uid than the token is bound to: refused, naming both."""

    async def body() -> None:
        async with cluster(tmp_path, (HONEST,)) as c:
            async with stream(c, HONEST) as honest:  # the token's pod uid is the pod's: served
                await honest.send(rt.SECRET, names=["default", "ROOTCA"])
                assert svid_uri(await honest.recv(5)) == RESULTS_SVID
            reborn = copy.deepcopy(c.pods[HONEST.name])
            reborn["metadata"]["uid"] = f"uid-of-{HONEST.name}-2"  # deleted and created again
            pushes = c.controller.pushes
            c.api.emit(PODS.path, "MODIFIED", reborn)
            assert await wait_until(lambda: c.controller.pushes > pushes, 5)
            async with stream(c, HONEST) as stale:
                await stale.send(rt.SECRET, names=["default"])
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stale.recv(5)
            details = str(refused.value.details())
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, details
            assert f"uid-of-{HONEST.name}" in details and "an earlier pod of that name" in details, details

    run(body(), timeout=60)
