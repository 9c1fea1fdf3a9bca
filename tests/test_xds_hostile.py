"""Hostile xDS clients against the control-plane core's ADS server (issue 11, item 3).

The target is what `interstate up` runs: a `ControlPlane` with its own CA, mutual TLS on the xDS
port and the standalone authenticator (a stream is served only the node its bootstrap
certificate's common name proves), holding real snapshots (SVIDs included) for two side-cars,
results and stats. Attackers are raw sockets, TLS sockets and scripted gRPC streams
(tests/helpers_xds.py); one test adds a real Envoy that must stay served while the attacks run.
After each attack: the server is still up and serves an honest client, memory and per-stream
state stay bounded, and no secret reached a node whose certificate does not prove it.

Limits under test are `xds.server.XdsLimits`; tests that need a timer to fire soon shrink it
(first request, handshake, keepalive, idle connection). Everything runs on 127.0.0.1 with
ephemeral ports, every loop is bounded in count and every wait in time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from helpers_xds import (
    MESH,
    METHOD,
    TlsAdsClient,
    envoy_command,
    find_envoy,
    free_port,
    metric,
    run,
    running_envoy,
    wait_until,
)

from interstate import audit
from interstate.ca import spiffe
from interstate.ca.authority import Authority, Issued, utcnow
from interstate.compile import bootstrap, names
from interstate.compile.proxy import Proxy
from interstate.config.loader import decode_sources
from interstate.core.identity import SERVER_TTL, XDS_SERVER_NAME, IdentitySettings
from interstate.core.plane import ControlPlane
from interstate.model.index import Endpoint, MeshIndex
from interstate.xds import resources as rt
from interstate.xds.server import AdsServer, XdsLimits

TD = "interstate.local"  # helpers_xds.MESH sets no trust domain: the default
RESULTS = Proxy.sidecar("results", 0, inbound_port=15006, outbound_port=15001, app_port=18080)
STATS = Proxy.sidecar("stats", 0, inbound_port=15007, outbound_port=15002, app_port=18081)
SECRETS = (names.SECRET_CERT, names.SECRET_ROOT)
LIMITS = XdsLimits()


def index(stats_port: int = 19000) -> MeshIndex:
    config = decode_sources({"mesh.yaml": MESH})
    return MeshIndex(config, {"stats": (Endpoint("stats", 0, "127.0.0.1", stats_port),)})


def rss_mb() -> float:
    """This process's resident memory (server and attackers share it: bounds are generous)."""
    gc.collect()
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---- the target: the core's ADS server, mutual TLS, real snapshots -------------------------


@dataclass
class Target:
    core: ControlPlane

    @property
    def ads(self) -> AdsServer:
        return self.core.ads

    @property
    def port(self) -> int:
        return self.core.port

    @property
    def authority(self) -> Authority:
        assert self.core.identity is not None
        return self.core.identity.authority

    def certificate(self, node_id: str, authority: Authority | None = None) -> Issued:
        """A bootstrap certificate as `interstate up` hands each Envoy (CN = the node ID)."""
        return (authority or self.authority).issue(
            spiffe.xds_client_id(TD, node_id), SERVER_TTL, utcnow(), common_name=node_id
        )

    def credentials(self, cert: Issued | None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.authority.bundle_pem.encode(),
            private_key=cert.key_pem.encode() if cert else None,
            certificate_chain=cert.chain_pem.encode() if cert else None,
        )

    def client(self, claims: str, proves: str | None = None, target: str = "") -> TlsAdsClient:
        """A stream claiming node `claims` with a certificate proving `proves` (default: the same)."""
        cert = self.certificate(proves or claims)
        return TlsAdsClient(self.port, claims, credentials=self.credentials(cert), target=target)

    def svid_key(self, proxy: Proxy) -> str:
        return self.core.credentials(proxy).key_pem

    def ssl_context(self, cert: Issued | None, alpn: str = "h2") -> ssl.SSLContext:
        """A raw TLS client context that trusts the mesh CA and presents `cert` (or nothing)."""
        context = ssl.create_default_context(cadata=self.authority.bundle_pem)
        context.check_hostname = False  # what is tested is the client side of the handshake
        context.set_alpn_protocols([alpn])
        if cert is not None:
            folder = Path(self.core.identity_settings.certs_dir)
            chain, key = folder / f"raw-{cert.serial:x}.crt", folder / f"raw-{cert.serial:x}.key"
            chain.write_text(cert.chain_pem)
            key.write_text(cert.key_pem)
            key.chmod(0o600)
            context.load_cert_chain(chain, key)
        return context


@contextlib.asynccontextmanager
async def target(
    tmp_path: Path, limits: XdsLimits | None = None, proxies: tuple[Proxy, ...] = (RESULTS, STATS)
) -> AsyncIterator[Target]:
    core = ControlPlane(IdentitySettings(tmp_path / "certs", tmp_path / "ca"), tmp_path / "audit.jsonl", limits)
    await core.start("127.0.0.1", 0, TD)
    try:
        assert core.push(index(), proxies) == len(proxies)
        yield Target(core)
    finally:
        await core.stop()


def secrets_in(response: discovery_pb2.DiscoveryResponse) -> list[secret_pb2.Secret]:
    out = []
    for item in response.resources:
        secret = secret_pb2.Secret()
        assert item.Unpack(secret)
        out.append(secret)
    return out


def uri_of(pem: str) -> str:
    cert = x509.load_pem_x509_certificates(pem.encode())[0]
    [uri] = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    return str(uri)


def assert_only_own_secrets(t: Target, proxy: Proxy, received: Iterable[discovery_pb2.DiscoveryResponse]) -> int:
    """Every certificate among `received` is `proxy`'s own SVID with its own key; returns how many."""
    own_uri, own_key = spiffe.workload_id(TD, proxy.service), t.svid_key(proxy)
    seen = 0
    for response in received:
        if response.type_url != rt.SECRET:
            continue
        for secret in secrets_in(response):
            if secret.HasField("tls_certificate"):
                assert uri_of(secret.tls_certificate.certificate_chain.inline_string) == own_uri
                assert secret.tls_certificate.private_key.inline_string == own_key
                seen += 1
    return seen


async def served_honestly(t: Target, proxy: Proxy = STATS) -> None:
    """An honest Envoy-like stream of `proxy`: its own SVID, its clusters and listeners, each ACKed."""
    async with t.client(proxy.node_id) as honest:
        await honest.send(rt.SECRET, names=SECRETS)
        sds = await honest.recv(timeout=10)
        assert assert_only_own_secrets(t, proxy, [sds]) == 1
        await honest.ack(sds, names=SECRETS)
        for type_url in (rt.CLUSTER, rt.LISTENER):
            await honest.send(type_url)
            response = await honest.recv(timeout=10)
            assert response.type_url == type_url and response.resources
            await honest.ack(response)
        await honest.expect_nothing()
        assert t.ads.acked(proxy.node_id, rt.CLUSTER) and t.ads.acked(proxy.node_id, rt.SECRET)


async def ended(client: TlsAdsClient, timeout: float = 10) -> grpc.aio.AioRpcError:
    """The error the stream ends with, asserting that nothing was received before it."""
    try:
        response = await client.recv(timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"expected the stream to end, got a {response.type_url} response")


def request(type_url: str, node: str = "", **fields: Any) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(type_url=type_url, **fields)
    if node:
        message.node.CopyFrom(base_pb2.Node(id=node, cluster="attacker"))
    return message


def open_raw_call(channel: grpc.aio.Channel) -> Any:
    """A stream whose requests are raw bytes (to send what is not a DiscoveryRequest)."""
    return channel.stream_stream(
        METHOD, request_serializer=lambda b: b, response_deserializer=discovery_pb2.DiscoveryResponse.FromString
    )()


def open_call(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream(
        METHOD,
        request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
    )()


def tasks() -> int:
    return len(asyncio.all_tasks())


# ---- garbage on the port -------------------------------------------------------------------


async def exchange(port: int, data: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Connect (TLS when `context`), send `data`, read until the server closes or 5 s pass."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=XDS_SERVER_NAME if context else None
    )
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
            async with asyncio.timeout(5):
                while chunk := await reader.read(65536):
                    received += chunk
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return received


def test_garbage_on_the_grpc_port_is_dropped_and_the_server_serves_on(tmp_path: Path) -> None:
    http1 = b"GET /envoy.service.discovery.v3.AggregatedDiscoveryService/x HTTP/1.1\r\nHost: x\r\n\r\n"
    junk = bytes(range(256)) * 256  # 64 KiB

    async def body() -> None:
        async with target(tmp_path) as t:
            other_ca = Authority.create(TD, utcnow())
            # plaintext on a TLS port: junk, HTTP/1.1, an HTTP/2 preface without TLS
            for data in (junk, http1, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + junk):
                assert b"HTTP/1.1 200" not in await exchange(t.port, data)
            # TLS without a client certificate, or with one from another CA: the handshake fails
            for cert in (None, t.certificate(RESULTS.node_id, authority=other_ca)):
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    assert await exchange(t.port, http1, t.ssl_context(cert)) == b""
            # a certified client speaking HTTP/1.1 (ALPN http/1.1), or junk after the h2 ALPN
            proven = t.certificate(RESULTS.node_id)
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                assert b"200" not in await exchange(t.port, http1, t.ssl_context(proven, alpn="http/1.1"))
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await exchange(t.port, junk, t.ssl_context(proven))
            assert t.ads.status() == {}  # none of it became a stream
            assert metric(t.ads, "interstate_xds_refused_streams_total") == 0
            await served_honestly(t)

    run(body(), timeout=40)


def test_a_connection_that_never_finishes_its_handshake_is_closed(tmp_path: Path) -> None:
    # gRPC's default is 120 s: a few thousand silent sockets would hold the server's descriptors.
    async def body() -> None:
        async with target(tmp_path, XdsLimits(handshake_s=0.5)) as t:
            reader, writer = await asyncio.open_connection("127.0.0.1", t.port)
            try:
                async with asyncio.timeout(5):
                    assert await reader.read() == b""  # the server closed it
            finally:
                writer.close()
            await served_honestly(t)

    run(body())


def test_a_connection_without_streams_is_closed_when_idle(tmp_path: Path) -> None:
    async def body() -> None:
        async with target(tmp_path, XdsLimits(idle_connection_s=0.5)) as t:
            client = t.client(RESULTS.node_id)
            channel = client.open_channel()
            try:
                await asyncio.wait_for(channel.channel_ready(), 5)
                # the server sends GOAWAY: the channel leaves READY without any call made
                async with asyncio.timeout(5):
                    while channel.get_state() == grpc.ChannelConnectivity.READY:
                        await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
            finally:
                await channel.close(None)

    run(body())


class Relay:
    """A TCP relay on 127.0.0.1 that can go silent without closing anything: both ends keep an
    open connection on which nothing arrives any more (a dead peer, a cut network)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.frozen = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.frozen:  # frozen: swallowed, and no FIN passed on either
                writer.write(data)
                await writer.drain()
        if not self.frozen:
            writer.close()


def test_a_dead_peer_is_reaped_by_keepalive(tmp_path: Path) -> None:
    # Without keepalive pings a stream whose peer vanished (no FIN, no RST) stays open forever,
    # counted as connected and holding one of its node's stream slots.
    async def body() -> None:
        limits = XdsLimits(keepalive_s=0.5, keepalive_timeout_s=1.0)
        async with target(tmp_path, limits) as t, Relay(0) as relay:
            relay.upstream = t.port
            async with t.client(RESULTS.node_id, target=f"127.0.0.1:{relay.port}") as client:
                await client.send(rt.CLUSTER)
                await client.ack(await client.recv(timeout=10))
                assert RESULTS.node_id in t.ads.connected_nodes()
                await asyncio.sleep(1.5)  # pings answered: an idle live stream stays
                assert RESULTS.node_id in t.ads.connected_nodes()
                relay.frozen = True
                gone = await wait_until(lambda: RESULTS.node_id not in t.ads.connected_nodes(), 10)
                assert gone, t.ads.status()
            await served_honestly(t, RESULTS)

    run(body())


# ---- malformed and oversized requests ------------------------------------------------------


def test_malformed_protobuf_ends_the_stream_with_invalid_argument(tmp_path: Path) -> None:
    async def body() -> None:
        async with target(tmp_path) as t:
            client = t.client(RESULTS.node_id)
            channel = client.open_channel()
            try:
                for garbage in (b"\xff\xff\xff\xff\x0f corrupt", b"\x0a\xff\xff\xff\x7f", bytes(range(256))):
                    call = open_raw_call(channel)
                    await call.write(garbage)
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        message = await asyncio.wait_for(call.read(), 10)
                        raise AssertionError(f"expected an error, got {message!r}")
                    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
                    assert "not a DiscoveryRequest" in (caught.value.details() or "")
                # after a valid first request too
                call = open_raw_call(channel)
                await call.write(request(rt.CLUSTER, RESULTS.node_id).SerializeToString())
                assert (await asyncio.wait_for(call.read(), 10)).type_url == rt.CLUSTER
                await call.write(b"\xff\xff\xff\xff\x0f")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await asyncio.wait_for(call.read(), 10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            finally:
                await channel.close(None)
            assert metric(t.ads, "interstate_xds_limited_streams_total", limit="malformed") == 4
            assert await wait_until(lambda: t.ads.status() == {}, 5)
            await served_honestly(t)

    run(body())


def test_a_stream_that_names_no_node_in_time_is_ended(tmp_path: Path) -> None:
    async def body() -> None:
        async with target(tmp_path, XdsLimits(first_request_s=0.5)) as t:
            async with t.client(RESULTS.node_id) as silent:
                error = await ended(silent)
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
                assert "node.id within 0.5s" in (error.details() or "")
            assert metric(t.ads, "interstate_xds_connected_streams") == 0
            await served_honestly(t)

    run(body())


def test_too_many_or_too_long_resource_names_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="interstate.xds.server")

    async def body() -> None:
        async with target(tmp_path) as t:
            cases = [
                # (names, code, what the status says)
                ([f"outbound|s{i}" for i in range(10_000)], grpc.StatusCode.RESOURCE_EXHAUSTED, "names 10000"),
                (["outbound|stats", "x" * 5_000], grpc.StatusCode.INVALID_ARGUMENT, "5000 bytes long"),
                (["x" * 1_000_000], grpc.StatusCode.INVALID_ARGUMENT, "1000000 bytes long"),
                (["x" * 1_000_000] * 3, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),  # gRPC's own
            ]
            for many, code, says in cases:
                for type_url in (rt.ENDPOINT, rt.SECRET):
                    async with t.client(RESULTS.node_id) as client:
                        await client.send(type_url, names=many)
                        error = await ended(client)
                        assert error.code() == code, error
                        assert says in (error.details() or "")
                        assert len(error.details() or "") < 500
                    # the first request on a served stream, or a later one: the same refusal
                    async with t.client(RESULTS.node_id) as client:
                        await client.send(rt.CLUSTER)
                        await client.ack(await client.recv(timeout=10))
                        await client.send(type_url, names=many)
                        assert (await ended(client)).code() == code
            # an honest-sized large subscription is served, with only what exists
            async with t.client(RESULTS.node_id) as client:
                await client.send(rt.ENDPOINT, names=["outbound|stats", *(f"outbound|svc{i}" for i in range(4000))])
                response = await client.recv(timeout=10)
                assert len(response.resources) == 1
            assert await wait_until(lambda: t.ads.status().keys() <= {RESULTS.node_id}, 5)
            assert max(len(r.getMessage()) for r in caplog.records) < 4000
            await served_honestly(t)

    run(body(), timeout=40)


def test_a_node_id_too_long_is_refused_before_it_is_echoed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="interstate.xds.server")

    async def body() -> None:
        async with target(tmp_path) as t:
            long_id = "sidecar~" + "a" * 100_000
            async with t.client(long_id, proves=RESULTS.node_id) as client:
                await client.send(rt.SECRET, names=SECRETS)
                error = await ended(client)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                assert "node.id is 100008 bytes long" in (error.details() or "")
                assert long_id not in (error.details() or "")
            assert not any("a" * 5000 in r.getMessage() for r in caplog.records)
            await served_honestly(t)

    run(body())


# ---- types, nonces, versions ---------------------------------------------------------------


def test_unknown_type_urls_get_nothing_and_the_stream_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # go-control-plane's snapshot cache answers a type it does not hold with nothing (an open
    # watch) and keeps the stream; Envoy's subscription to it then times out on its own. Same here,
    # but a request without a type URL is an error there and here (INVALID_ARGUMENT).
    caplog.set_level(logging.DEBUG, logger="interstate.xds.server")
    unknown = [
        "type.googleapis.com/envoy.config.runtime.v3.Runtime",  # RTDS: Envoy may ask for it
        "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "type.googleapis.com/envoy.config.cluster.v3.cluster",  # case matters
        "type.googleapis.com/" + "x" * 200_000,
        "\x00\n\r" * 100,
    ]

    async def body() -> None:
        async with target(tmp_path) as t, t.client(RESULTS.node_id) as client:
            await client.send(rt.CLUSTER)
            cds = await client.recv(timeout=10)
            await client.ack(cds)
            for i in range(1000):
                await client.send(unknown[i % len(unknown)], names=["default", "ROOTCA"], version="v1", nonce=cds.nonce)
            await client.expect_nothing(0.5)
            # the stream is alive and serves the types it knows
            await client.send(rt.SECRET, names=SECRETS)
            assert assert_only_own_secrets(t, RESULTS, [await client.recv(timeout=10)]) == 1
            logged = [r.getMessage() for r in caplog.records if "unsupported type" in r.getMessage()]
            assert len(logged) == 1 and len(logged[0]) < 400  # once per stream, clipped
            assert metric(t.ads, "interstate_xds_unknown_type_requests_total") == 1000
            async with t.client(STATS.node_id) as no_type:
                await no_type.send("")
                error = await ended(no_type)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "type_url" in (error.details() or "")

    run(body())


def test_stale_forged_and_foreign_nonces_change_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        async with target(tmp_path) as t, t.client(RESULTS.node_id) as a, t.client(STATS.node_id) as b:
            await a.send(rt.CLUSTER)
            a_cds = await a.recv(timeout=10)
            await b.send(rt.CLUSTER)
            b_cds = await b.recv(timeout=10)
            acks = metric(t.ads, "interstate_xds_acks_total", type="CDS")
            # b answers with a's nonce, a forged one, a huge one: stale, not ACKs or NACKs
            for nonce in (a_cds.nonce, "1", "999999", "n" * 100_000):
                await b.send(rt.CLUSTER, version=b_cds.version_info, nonce=nonce, error="forged rejection")
                await b.send(rt.CLUSTER, version="forged-version", nonce=nonce)
            await b.expect_nothing()
            assert metric(t.ads, "interstate_xds_stale_requests_total", type="CDS") == 8
            assert a_cds.nonce != b_cds.nonce  # nonces are the stream's own
            assert metric(t.ads, "interstate_xds_nacks_total", type="CDS") == 0
            assert metric(t.ads, "interstate_xds_acks_total", type="CDS") == acks
            assert t.ads.status()[STATS.node_id].types["CDS"].acked == ""
            assert t.ads.status()[STATS.node_id].types["CDS"].nack is None
            # an ACK of the right nonce records the version that nonce carried, whatever it claims
            await b.send(rt.CLUSTER, version="v" * 100_000, nonce=b_cds.nonce)
            await b.expect_nothing()
            assert t.ads.status()[STATS.node_id].types["CDS"].acked == b_cds.version_info
            # a is untouched by all of it
            await a.ack(a_cds)
            await a.expect_nothing()
            assert t.ads.status()[RESULTS.node_id].types["CDS"].acked == a_cds.version_info
            assert audit.read(t.core.audit.path) == []

    run(body())


def test_huge_nack_messages_are_clipped_and_recorded_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="interstate.xds.server")

    async def body() -> None:
        async with target(tmp_path) as t, t.client(RESULTS.node_id) as client:
            huge = "Envoy says no. " + "\n\r\x1b[31m" * 90_000  # ~0.8 MB, with control characters
            await client.send(rt.ENDPOINT, names=["outbound|stats"])
            eds = await client.recv(timeout=10)
            names = ["outbound|stats"]
            for i in range(50):
                # NACK the response, then re-request it with other names: a new response each time
                await client.send(rt.ENDPOINT, version="", nonce=eds.nonce, names=names, error=huge)
                names = ["outbound|stats", f"outbound|other{i}"]
                await client.send(rt.ENDPOINT, version="", nonce=eds.nonce, names=names)
                eds = await client.recv(timeout=10)
            assert metric(t.ads, "interstate_xds_nacks_total", type="EDS") == 50
            nack = t.ads.status()[RESULTS.node_id].types["EDS"].nack
            assert nack is not None and nack.message.startswith("Envoy says no.")
            # at most max_text_chars of the client's characters, each control character escaped (4 chars)
            assert len(nack.message) <= 4 * LIMITS.max_text_chars + 40 and "more characters" in nack.message
            assert "\x1b" not in nack.message and "\r" not in nack.message and "\\x1b[31m" in nack.message
            records = [r for r in audit.read(t.core.audit.path) if r["action"] == "xds.nack"]
            assert len(records) == 1  # the same rejection of the same version, reported once
            assert nack.message.startswith(records[0]["detail"]["message"].rstrip("…"))  # the trail clips too
            assert (tmp_path / "audit.jsonl").stat().st_size < 40_000
            assert max(len(r.getMessage()) for r in caplog.records) < 10_000
            assert not any("\x1b" in r.getMessage() for r in caplog.records)
            assert [m for _, m in t.ads.rejections([RESULTS.node_id])[1].items()] == [[f"EDS: {nack.message}"]]
            await served_honestly(t)

    run(body(), timeout=40)


# ---- identity: whose secrets -----------------------------------------------------------------


def test_a_certificate_for_one_node_never_gets_anothers_secrets(tmp_path: Path) -> None:
    async def body() -> None:
        async with target(tmp_path) as t:
            # claims stats from the start with results' certificate: refused, nothing sent
            async with t.client(STATS.node_id, proves=RESULTS.node_id) as impostor:
                await impostor.send(rt.SECRET, names=SECRETS)
                assert (await ended(impostor)).code() == grpc.StatusCode.PERMISSION_DENIED
            # proves results, then claims stats in later requests and asks for every name it can think of
            received = []
            async with t.client(RESULTS.node_id) as attacker:
                await attacker.send(rt.SECRET, names=SECRETS)
                received.append(await attacker.recv(timeout=10))
                wanted = [
                    *SECRETS,
                    "stats",
                    "default/stats",
                    STATS.node_id,
                    spiffe.workload_id(TD, "stats"),
                    spiffe.system_id(TD, "ingress"),
                    "ROOTCA ",
                    "*",
                    "",
                    *(os.urandom(8).hex() for _ in range(50)),
                ]
                for i, claim in enumerate((STATS.node_id, "sidecar~ingress-0", RESULTS.node_id, "")):
                    message = request(rt.SECRET, claim, resource_names=wanted[: 10 + 10 * i])
                    message.response_nonce = received[-1].nonce
                    await attacker.call.write(message)
                    received.append(await attacker.recv(timeout=10))
                await attacker.send(rt.SECRET, names=["stats", "random"])  # only names that are not its own
                received.append(await attacker.recv(timeout=10))
                assert not received[-1].resources
                for type_url in (rt.CLUSTER, rt.LISTENER, rt.ENDPOINT, rt.ROUTE):
                    await attacker.send(type_url, names=wanted)
                    received.append(await attacker.recv(timeout=10))
            assert assert_only_own_secrets(t, RESULTS, received) == 5
            stats_key = t.svid_key(STATS).encode()
            assert not any(stats_key in r.SerializeToString() for r in received)
            assert {s.name for r in received if r.type_url == rt.SECRET for s in secrets_in(r)} == set(SECRETS)
            assert await wait_until(lambda: t.ads.status() == {}, 5), t.ads.status()
            await served_honestly(t)

    run(body())


# ---- many streams --------------------------------------------------------------------------


def test_streams_opened_and_dropped_by_the_thousand_leave_nothing_behind(tmp_path: Path) -> None:
    async def body() -> None:
        async with target(tmp_path) as t:
            client = t.client(RESULTS.node_id)
            channel = client.open_channel()

            async def churn(count: int) -> None:
                for i in range(count):
                    call = open_call(channel)
                    await call.write(
                        request(rt.CLUSTER if i % 2 else rt.SECRET, RESULTS.node_id, resource_names=SECRETS)
                    )
                    if i % 3:  # some wait for their response, the others drop at once
                        response = await asyncio.wait_for(call.read(), 10)
                        assert assert_only_own_secrets(t, RESULTS, [response]) <= 1
                    call.cancel()
                # and some whole connections (TLS handshakes) opened and dropped
                for _ in range(count // 20):
                    async with t.client(RESULTS.node_id) as one:
                        await one.send(rt.CLUSTER)

            try:
                await churn(200)  # warm-up: the first allocations are not a leak
                idle = lambda: metric(t.ads, "interstate_xds_connected_streams") == 0  # noqa: E731
                assert await wait_until(idle, 10)
                memory, running = rss_mb(), tasks()
                await churn(2000)
                assert await wait_until(idle, 10), t.ads.status()
                assert await wait_until(lambda: tasks() <= running, 5), f"{tasks()} tasks, {running} before"
                assert t.ads.status() == {}
                assert rss_mb() - memory < 64, f"{rss_mb() - memory:.0f} MB more after 2,000 streams"
            finally:
                await channel.close(None)
            await served_honestly(t)

    run(body(), timeout=50)


def test_streams_held_open_are_capped_per_node_and_in_all(tmp_path: Path) -> None:
    async def body() -> None:
        async with target(tmp_path) as t:
            # 200 streams held open by one certificate: its node gets its 8, the rest are refused
            held = [t.client(RESULTS.node_id) for _ in range(200)]
            memory = rss_mb()
            try:
                for client in held:
                    await client.__aenter__()
                    await client.send(rt.CLUSTER)
                outcomes = await asyncio.gather(*(c.recv(timeout=10) for c in held), return_exceptions=True)
                served = [o for o in outcomes if isinstance(o, discovery_pb2.DiscoveryResponse)]
                refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
                assert len(served) == LIMITS.max_streams_per_node and len(refused) == 200 - len(served)
                assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
                assert "at most 8 are served per node" in (refused[0].details() or "")
                assert t.ads.status()[RESULTS.node_id].streams == LIMITS.max_streams_per_node
                await served_honestly(t)  # another node is served meanwhile
                assert rss_mb() - memory < 100
            finally:
                await asyncio.gather(*(c.close() for c in held))

        # the cap on all streams counts streams that have not said who they are yet
        async with target(tmp_path / "all", XdsLimits(max_streams=10, first_request_s=2)) as t:
            silent = [t.client(RESULTS.node_id) for _ in range(30)]
            try:
                for client in silent:
                    await client.__aenter__()
                outcomes = await asyncio.gather(*(ended(c) for c in silent))
                codes = collections.Counter(e.code() for e in outcomes)
                # twenty refused at once; the ten admitted never speak, and the first-request
                # deadline ends them, freeing their slots
                assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED: 20, grpc.StatusCode.DEADLINE_EXCEEDED: 10}
                exhausted = next(e for e in outcomes if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
                assert "at most 10 xDS streams" in (exhausted.details() or "")
            finally:
                await asyncio.gather(*(c.close() for c in silent))
            await served_honestly(t)

    run(body(), timeout=50)


def test_streams_per_connection_are_capped_by_http2(tmp_path: Path) -> None:
    async def body() -> None:
        async with target(tmp_path, XdsLimits(max_streams_per_node=1000, first_request_s=30)) as t:
            channel = t.client(RESULTS.node_id).open_channel()  # one connection
            await asyncio.wait_for(channel.channel_ready(), 5)
            calls = [open_call(channel) for _ in range(40)]  # silent: each is a stream all the same
            try:
                opened = lambda: metric(t.ads, "interstate_xds_connected_streams")  # noqa: E731
                assert await wait_until(lambda: opened() >= LIMITS.streams_per_connection, 5), opened()
                await asyncio.sleep(1)  # the others would arrive too if the connection allowed them
                assert opened() == LIMITS.streams_per_connection
            finally:
                for call in calls:
                    call.cancel()
                await channel.close(None)
            await served_honestly(t)

    run(body())


# ---- a client that never reads -------------------------------------------------------------


def test_a_client_that_never_reads_is_held_back_not_buffered(tmp_path: Path) -> None:
    # Every request without a nonce asks for the full state again. A client that never reads its
    # responses stalls the server's writes; the server must then stop reading too (HTTP/2 flow
    # control pushes back on the client) instead of queueing its requests in memory.
    async def body() -> None:
        async with target(tmp_path) as t:
            cert = t.certificate(RESULTS.node_id)
            channel = grpc.aio.secure_channel(
                f"127.0.0.1:{t.port}",
                t.credentials(cert),
                options=[
                    ("grpc.ssl_target_name_override", XDS_SERVER_NAME),
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.http2.bdp_probe", 0),  # a receive window that stays small
                ],
            )
            call = open_call(channel)
            padding = [f"outbound|{i:04d}|" + "p" * 900 for i in range(100)]  # ~ 100 KB a request
            memory = rss_mb()
            try:
                await call.write(request(rt.LISTENER, RESULTS.node_id))
                sent, blocked = 0, False
                while sent < 2000 and not blocked:
                    try:
                        await asyncio.wait_for(call.write(request(rt.LISTENER, resource_names=padding)), 1.0)
                        sent += 1
                    except TimeoutError:
                        blocked = True
                grown = rss_mb() - memory
                assert blocked, f"{sent} requests of 100 KB accepted from a client that reads nothing (+{grown:.0f} MB)"
                assert grown < 150, f"+{grown:.0f} MB"
                await served_honestly(t)  # the stalled stream holds nobody else up
                # a snapshot change does not pile up on the stalled stream either
                t.core.push(index(19001), [RESULTS, STATS])
                await served_honestly(t)
            finally:
                call.cancel()
                await channel.close(None)
            assert await wait_until(lambda: RESULTS.node_id not in t.ads.connected_nodes(), 10)

    run(body(), timeout=50)


# ---- a real Envoy under attack -------------------------------------------------------------


def test_an_honest_envoy_stays_served_while_the_server_is_attacked(tmp_path: Path) -> None:
    stats = Proxy.sidecar("stats", 0, inbound_port=free_port(), outbound_port=free_port(), app_port=free_port())

    async def body() -> None:
        async with target(tmp_path, proxies=(RESULTS, stats)) as t:
            assert t.core.identity is not None
            admin = free_port()
            config = tmp_path / "stats-envoy.json"
            xds_tls = t.core.identity.bootstrap_tls(stats)
            config.write_text(json.dumps(bootstrap.build(stats.node_id, "stats", admin, "127.0.0.1", t.port, xds_tls)))
            argv = envoy_command(find_envoy(), config, "info")
            async with running_envoy(argv, admin, tmp_path / "stats-envoy.log", "stats", "/ready", 20) as envoy:
                for type_url in (rt.SECRET, rt.CLUSTER, rt.LISTENER):
                    assert await t.core.wait_acked([stats.node_id], type_url, 10), t.ads.status()

                async def attack() -> None:
                    channel = t.client(RESULTS.node_id).open_channel()
                    try:
                        for i in range(300):
                            call = open_call(channel) if i % 10 else open_raw_call(channel)
                            data = request(rt.SECRET, RESULTS.node_id, resource_names=SECRETS)
                            await call.write(data if i % 10 else b"\xff\xff\xff\xff\x0f")
                            if i % 2:
                                with contextlib.suppress(grpc.aio.AioRpcError):
                                    await asyncio.wait_for(call.read(), 10)
                            call.cancel()
                    finally:
                        await channel.close(None)
                    async with t.client(stats.node_id, proves=RESULTS.node_id) as impostor:
                        await impostor.send(rt.SECRET, names=SECRETS)
                        assert (await ended(impostor)).code() == grpc.StatusCode.PERMISSION_DENIED
                    for _ in range(5):
                        await exchange(t.port, b"\x16\x03\x01" + bytes(4000))

                async def stall() -> None:
                    # results' whole stream allowance, one of them flooding requests and never reading
                    held = [t.client(RESULTS.node_id) for _ in range(LIMITS.max_streams_per_node)]
                    try:
                        for client in held:
                            await client.__aenter__()
                            await client.send(rt.LISTENER)
                        for _ in range(300):
                            await asyncio.wait_for(held[0].send(rt.LISTENER, names=["p" * 1000] * 50), 1.0)
                    except TimeoutError:
                        pass  # held back: the server stopped reading it
                    finally:
                        await asyncio.gather(*(c.close() for c in held))

                attackers = asyncio.gather(attack(), attack(), stall())
                # meanwhile stats' configuration moves on (a new outbound port: a new LDS version)
                moved = dataclasses.replace(stats, outbound_port=free_port())
                before = t.core.cache.get(stats.node_id)
                assert t.core.push(index(19002), [RESULTS, moved]) == 2
                await attackers
                after = t.core.cache.get(stats.node_id)
                assert before is not None and after is not None
                assert after.version(rt.LISTENER) != before.version(rt.LISTENER)
                assert await t.core.wait_acked([stats.node_id], rt.LISTENER, 15), t.ads.status()
                assert t.ads.status()[stats.node_id].streams == 1
                counters = await envoy.stats(r"control_plane\.connected_state|update_rejected")
                assert counters.get("control_plane.connected_state") == 1, counters
                assert not any(v for k, v in counters.items() if "update_rejected" in k), counters

    run(body(), timeout=50)
