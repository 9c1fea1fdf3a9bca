"""Protocol tests of the ADS server's identity check: with mutual TLS on the xDS port, what a
stream receives is decided by the node ID its client certificate proves (common name), never by
the node ID it claims.

The server gets credentials built as `interstate.standalone.identity` builds them (a throw-away
CA, a server certificate for `xds.interstate` with the control plane's SPIFFE ID); clients are
scripted ADS streams (tests/helpers_xds.py) over a grpc.aio secure channel presenting bootstrap
certificates like the supervisor hands each Envoy. Everything on 127.0.0.1, ephemeral ports.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from helpers_xds import MESH, AdsClient, metric, run, snapshot_of

from interstate.ca import spiffe
from interstate.ca.authority import Authority, Issued, utcnow
from interstate.compile import names
from interstate.compile.proxy import Credentials, Proxy
from interstate.core.identity import SERVER_TTL, XDS_SERVER_NAME
from interstate.xds import resources as rt
from interstate.xds.cache import SnapshotCache
from interstate.xds.server import AdsServer

TRUST_DOMAIN = "interstate.local"  # the test mesh (helpers_xds.MESH) sets no trust domain
RESULTS = Proxy.sidecar("results", 0, inbound_port=15006, outbound_port=15001, app_port=18080)
STATS = Proxy.sidecar("stats", 0, inbound_port=15007, outbound_port=15002, app_port=18081)
SECRETS = (names.SECRET_CERT, names.SECRET_ROOT)
REFUSED = "interstate_xds_refused_streams_total"


@dataclass(frozen=True)
class Pki:
    authority: Authority
    server: Issued
    results: Credentials  # SVIDs delivered over SDS
    stats: Credentials

    def bootstrap(self, node_id: str, service: str, authority: Authority | None = None) -> Issued:
        """The certificate an Envoy connects to the control plane with (CN = its node ID)."""
        authority = authority or self.authority
        return authority.issue(spiffe.xds_client_id(TRUST_DOMAIN, node_id), SERVER_TTL, utcnow(), common_name=node_id)


def svid(authority: Authority, service: str) -> Credentials:
    issued = authority.issue(spiffe.workload_id(TRUST_DOMAIN, service), timedelta(hours=1), utcnow())
    return Credentials(issued.identity, issued.chain_pem, issued.key_pem, authority.bundle_pem)


@pytest.fixture(scope="module")
def pki() -> Pki:
    now = utcnow()
    authority = Authority.create(TRUST_DOMAIN, now)
    server = authority.issue(spiffe.control_plane_id(TRUST_DOMAIN), SERVER_TTL, now, dns_names=(XDS_SERVER_NAME,))
    return Pki(authority, server, svid(authority, "results"), svid(authority, "stats"))


def server_credentials(pki: Pki) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(pki.server.key_pem.encode(), pki.server.chain_pem.encode())],
        root_certificates=pki.authority.bundle_pem.encode(),
        require_client_auth=True,
    )


@contextlib.asynccontextmanager
async def secure_ads_server(pki: Pki) -> AsyncIterator[AdsServer]:
    """An mTLS AdsServer with snapshots (secrets included) for the results and stats side-cars."""
    cache = SnapshotCache()
    cache.set(RESULTS.node_id, snapshot_of(RESULTS, MESH, {"stats": [("127.0.0.1", 19000)]}, pki.results))
    cache.set(STATS.node_id, snapshot_of(STATS, MESH, None, pki.stats))
    server = AdsServer(cache)
    try:
        await server.start("127.0.0.1", 0, credentials=server_credentials(pki))
        yield server
    finally:
        await server.stop(0)


def channel_credentials(pki: Pki, client: Issued | None) -> grpc.ChannelCredentials:
    """Trust the mesh bundle; present `client` (None: no client certificate at all)."""
    return grpc.ssl_channel_credentials(
        root_certificates=pki.authority.bundle_pem.encode(),
        private_key=client.key_pem.encode() if client else None,
        certificate_chain=client.chain_pem.encode() if client else None,
    )


@dataclass
class SecureAdsClient(AdsClient):
    """The scripted ADS stream of helpers_xds over TLS, as an Envoy with a bootstrap cert."""

    credentials: grpc.ChannelCredentials | None = None

    def open_channel(self) -> grpc.aio.Channel:
        assert self.credentials is not None
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}",
            self.credentials,
            options=[("grpc.ssl_target_name_override", XDS_SERVER_NAME)],
        )


def secrets_of(response: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    assert response.type_url == rt.SECRET
    out = {}
    for item in response.resources:
        secret = secret_pb2.Secret()
        assert item.Unpack(secret)
        out[secret.name] = secret
    return out


def uri_sans(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificates(pem.encode())[0]
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )


async def refusal(client: AdsClient) -> grpc.aio.AioRpcError:
    """The error a stream ends with, asserting that no response came before it."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        response = await client.recv(timeout=10)
        raise AssertionError(f"expected a refusal, got a {response.type_url} response")
    return caught.value


# ---- a proven node gets its own secrets, and nothing else ----------------------------------


def test_a_proxy_gets_its_own_secrets_for_the_node_it_proves(pki: Pki) -> None:
    async def body() -> None:
        bootstrap = pki.bootstrap(RESULTS.node_id, "results")
        async with (
            secure_ads_server(pki) as server,
            SecureAdsClient(server.port, RESULTS.node_id, credentials=channel_credentials(pki, bootstrap)) as client,
        ):
            await client.send(rt.SECRET, names=SECRETS)
            response = await client.recv(timeout=10)
            secrets = secrets_of(response)
            assert set(secrets) == set(SECRETS)
            own = secrets[names.SECRET_CERT].tls_certificate
            assert uri_sans(own.certificate_chain.inline_string) == [spiffe.workload_id(TRUST_DOMAIN, "results")]
            assert own.private_key.inline_string == pki.results.key_pem
            assert secrets[names.SECRET_ROOT].validation_context.trusted_ca.inline_string == pki.authority.bundle_pem

            # every other type too: nothing of stats' identity anywhere in what results receives
            seen = [response.SerializeToString()]
            for type_url in (rt.CLUSTER, rt.LISTENER):
                await client.send(type_url)
                seen.append((await client.recv(timeout=10)).SerializeToString())
            for leaked in (pki.stats.key_pem, pki.stats.chain_pem):
                assert not any(leaked.encode() in data for data in seen)
            assert metric(server, REFUSED) == 0
            assert server.status()[RESULTS.node_id].streams == 1

    run(body())


def test_a_later_request_cannot_switch_the_node_of_a_stream(pki: Pki) -> None:
    # Envoy sends its node on the first request only; a node on a later request changes nothing.
    async def body() -> None:
        bootstrap = pki.bootstrap(RESULTS.node_id, "results")
        async with (
            secure_ads_server(pki) as server,
            SecureAdsClient(server.port, RESULTS.node_id, credentials=channel_credentials(pki, bootstrap)) as client,
        ):
            await client.send(rt.CLUSTER)
            await client.ack(await client.recv(timeout=10))
            claim = discovery_pb2.DiscoveryRequest(type_url=rt.SECRET, resource_names=list(SECRETS))
            claim.node.CopyFrom(base_pb2.Node(id=STATS.node_id, cluster="test"))
            await client.call.write(claim)
            secrets = secrets_of(await client.recv(timeout=10))
            assert secrets[names.SECRET_CERT].tls_certificate.private_key.inline_string == pki.results.key_pem
            assert set(server.status()) == {RESULTS.node_id}

    run(body())


# ---- refusals ------------------------------------------------------------------------------


def test_a_certificate_claiming_another_node_is_refused(pki: Pki) -> None:
    async def body() -> None:
        bootstrap = pki.bootstrap(RESULTS.node_id, "results")  # proves results-0 ...
        async with (
            secure_ads_server(pki) as server,
            SecureAdsClient(server.port, STATS.node_id, credentials=channel_credentials(pki, bootstrap)) as client,
        ):
            before = metric(server, REFUSED)
            await client.send(rt.SECRET, names=SECRETS)  # ... and claims stats-0
            error = await refusal(client)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
            assert "sidecar~stats-0" in (error.details() or "") and "sidecar~results-0" in (error.details() or "")
            assert metric(server, REFUSED) == before + 1
            assert server.status() == {}  # the refused stream is gone

    run(body())


def test_a_mesh_certificate_without_a_node_name_is_refused(pki: Pki) -> None:
    # A workload SVID (what SDS delivers) has no common name: it cannot open an xDS stream.
    async def body() -> None:
        issued = pki.authority.issue(spiffe.workload_id(TRUST_DOMAIN, "results"), timedelta(hours=1), utcnow())
        async with (
            secure_ads_server(pki) as server,
            SecureAdsClient(server.port, RESULTS.node_id, credentials=channel_credentials(pki, issued)) as client,
        ):
            await client.send(rt.SECRET, names=SECRETS)
            error = await refusal(client)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
            assert metric(server, REFUSED) == 1

    run(body())


@pytest.mark.parametrize("client", ["no-client-certificate", "another-ca"])
def test_a_client_the_mesh_ca_did_not_certify_cannot_connect(pki: Pki, client: str) -> None:
    async def body() -> None:
        if client == "another-ca":
            # the right node name and SPIFFE ID, from a CA the control plane does not trust
            other = Authority.create(TRUST_DOMAIN, utcnow())
            presented: Issued | None = pki.bootstrap(RESULTS.node_id, "results", authority=other)
        else:
            presented = None
        async with (
            secure_ads_server(pki) as server,
            SecureAdsClient(server.port, RESULTS.node_id, credentials=channel_credentials(pki, presented)) as ads,
        ):
            with contextlib.suppress(grpc.aio.AioRpcError):  # the write may already fail
                await ads.send(rt.SECRET, names=SECRETS)
            error = await refusal(ads)
            # the TLS handshake fails: no stream reaches the server at all
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert server.status() == {}
            assert metric(server, REFUSED) == 0
            # the same server does serve a client the mesh CA certified
            certified = channel_credentials(pki, pki.bootstrap(RESULTS.node_id, "results"))
            async with SecureAdsClient(server.port, RESULTS.node_id, credentials=certified) as good:
                await good.send(rt.SECRET, names=SECRETS)
                assert set(secrets_of(await good.recv(timeout=10))) == set(SECRETS)

    run(body())
