"""Protocol tests of AdsServer (state of the world) with a scripted gRPC ADS client.

Each test starts a real grpc.aio AdsServer on 127.0.0.1 (ephemeral port) and drives one or more
streams by hand with DiscoveryRequests, checking the rules in DESIGN.md ("Protocol facts that
bite"): full state on first request and reconnect, no answer to an ACK, stale nonces ignored,
NACKs recorded without resending the rejected version, make-before-break push order.
The end-to-end counterpart with a real Envoy is tests/test_xds_envoy.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from helpers_xds import (
    MESH,
    MESH_WITH_AUDIT,
    AdsClient,
    ads_server,
    compile_mesh,
    make_credentials,
    metric,
    run,
    snapshot_of,
    wait_until,
)

from interstate.compile.proxy import Proxy
from interstate.errors import SnapshotError
from interstate.xds import resources as rt
from interstate.xds.cache import SnapshotCache
from interstate.xds.server import AdsServer
from interstate.xds.snapshot import Snapshot, check_consistent, response

PROXY = Proxy.sidecar("results", 0, inbound_port=15006, outbound_port=15001, app_port=18080)
NODE = PROXY.node_id
STATS = {"stats": [("127.0.0.1", 19000)]}
STATS_AND_AUDIT = {"stats": [("127.0.0.1", 19000)], "audit": [("127.0.0.1", 19001)]}
CREDS = make_credentials()
ROTATED = make_credentials()  # the same identity with a new key: only SDS changes

MESSAGE = {
    rt.CLUSTER: cluster_pb2.Cluster,
    rt.ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    rt.LISTENER: listener_pb2.Listener,
    rt.ROUTE: route_pb2.RouteConfiguration,
    rt.SECRET: secret_pb2.Secret,
}
# What Envoy would subscribe to for each type (EDS and RDS are named, CDS and LDS wildcard).
NAMES = {
    rt.CLUSTER: (),
    rt.ENDPOINT: ("outbound|stats",),
    rt.LISTENER: (),
    rt.ROUTE: ("inbound", "outbound"),
    rt.SECRET: ("default", "ROOTCA"),
}


def first() -> Snapshot:
    return snapshot_of(PROXY, MESH, STATS, CREDS)


def every_type_changed() -> Snapshot:
    """A snapshot for the same node in which every type has a new version."""
    moved = dataclasses.replace(PROXY, outbound_port=15002)  # new LDS
    return snapshot_of(moved, MESH_WITH_AUDIT, STATS_AND_AUDIT, ROTATED)  # new CDS, EDS, RDS, SDS


def only_endpoints_changed() -> Snapshot:
    return snapshot_of(PROXY, MESH, {"stats": [("127.0.0.1", 19999)]}, CREDS)


def total_pushes(server: AdsServer) -> float:
    return sum(metric(server, "interstate_xds_pushes_total", type=rt.SHORT[t]) for t in rt.ORDER)


def decode(resp: discovery_pb2.DiscoveryResponse) -> dict[str, Any]:
    """Unpack every resource of a response to its message type; {name: message}."""
    out: dict[str, Any] = {}
    cls = MESSAGE[resp.type_url]
    for item in resp.resources:
        assert item.type_url == resp.type_url
        message = cls()
        assert item.Unpack(message), f"resource does not unpack as {cls.__name__}"
        name = message.cluster_name if cls is endpoint_pb2.ClusterLoadAssignment else message.name
        out[name] = message
    return out


async def subscribe_all(client: AdsClient) -> dict[str, discovery_pb2.DiscoveryResponse]:
    """Subscribe to every type and ACK each first response; returns the responses by type."""
    got = {}
    for type_url in rt.ORDER:
        await client.send(type_url, names=NAMES[type_url])
        got[type_url] = await client.recv()
        assert got[type_url].type_url == type_url
    for type_url in rt.ORDER:
        await client.ack(got[type_url], names=NAMES[type_url])
    await client.expect_nothing()
    return got


# ---- (a) first request ----------------------------------------------------------------------


def test_first_request_per_type_gets_full_current_state() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        snap = first()
        cache.set(NODE, snap)
        expected = {
            rt.CLUSTER: {"outbound|stats", "inbound|results", "inbound|results|h2", "tunnel|outbound"},
            rt.ENDPOINT: {"outbound|stats"},
            rt.LISTENER: {"inbound", "outbound", "outbound-tunnel"},
            rt.ROUTE: {"inbound", "outbound"},
            rt.SECRET: {"default", "ROOTCA"},
        }
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            nonces = set()
            for type_url in rt.ORDER:
                await client.send(type_url, names=NAMES[type_url])
                resp = await client.recv()
                assert isinstance(resp, discovery_pb2.DiscoveryResponse)
                assert resp.type_url == type_url
                assert resp.version_info == snap.version(type_url)
                assert resp.nonce and resp.nonce not in nonces
                nonces.add(resp.nonce)
                resources = decode(resp)
                assert set(resources) == expected[type_url]
                assert all(isinstance(m, MESSAGE[type_url]) for m in resources.values())
                if type_url == rt.ENDPOINT:  # the payload is the endpoint we compiled
                    lb = resources["outbound|stats"].endpoints[0].lb_endpoints
                    assert [e.endpoint.address.socket_address.port_value for e in lb] == [19000]
            assert server.status()[NODE].types["CDS"].sent == snap.version(rt.CLUSTER)
            assert metric(server, "interstate_xds_pushes_total", type="CDS") == 1

    run(body())


def test_first_request_before_snapshot_is_answered_when_it_is_set() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            await client.send(rt.CLUSTER)
            await client.expect_nothing()
            snap = first()
            cache.set(NODE, snap)
            resp = await client.recv()
            assert (resp.type_url, resp.version_info) == (rt.CLUSTER, snap.version(rt.CLUSTER))

    run(body())


# ---- (b) ACK --------------------------------------------------------------------------------


def test_ack_gets_no_response() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        snap = first()
        cache.set(NODE, snap)
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            for type_url in rt.ORDER:
                await client.send(type_url, names=NAMES[type_url])
                resp = await client.recv()
                await client.ack(resp, names=NAMES[type_url])
                await client.expect_nothing()
                assert server.acked(NODE, type_url)
                assert metric(server, "interstate_xds_acks_total", type=rt.SHORT[type_url]) == 1
            types = server.status()[NODE].types
            assert {t: s.acked for t, s in types.items()} == {rt.SHORT[t]: snap.version(t) for t in rt.ORDER}
            assert metric(server, "interstate_xds_pushes_total", type="CDS") == 1

    run(body())


# ---- (c) stale nonce ------------------------------------------------------------------------


def test_stale_nonce_is_ignored() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            await client.send(rt.CLUSTER)
            old = await client.recv()
            newer = every_type_changed()
            cache.set(NODE, newer)
            new = await client.recv()  # pushed before the client ACKed `old`
            assert new.version_info == newer.version(rt.CLUSTER) and new.nonce != old.nonce

            await client.ack(old)  # nonce of a response already superseded
            await client.expect_nothing()
            assert metric(server, "interstate_xds_stale_requests_total", type="CDS") == 1
            assert metric(server, "interstate_xds_acks_total", type="CDS") == 0

            # A stale NACK is ignored just the same: not counted, not recorded.
            await client.send(rt.CLUSTER, version=old.version_info, nonce=old.nonce, error="late")
            await client.expect_nothing()
            assert metric(server, "interstate_xds_stale_requests_total", type="CDS") == 2
            assert metric(server, "interstate_xds_nacks_total", type="CDS") == 0
            assert server.status()[NODE].types["CDS"].nack is None

            await client.ack(new)  # the current nonce is a real ACK
            await client.expect_nothing()
            assert server.status()[NODE].types["CDS"].acked == newer.version(rt.CLUSTER)

    run(body())


# ---- (d) NACK -------------------------------------------------------------------------------


def test_nack_is_recorded_not_resent_and_a_new_version_is_sent() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        good = first()
        cache.set(NODE, good)
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            await subscribe_all(client)

            rejected = every_type_changed()
            cache.set(NODE, rejected)
            pushed = {}
            for _ in rt.ORDER:
                resp = await client.recv()
                pushed[resp.type_url] = resp
            # Envoy rejects the clusters: NACK with the last good version and the new nonce.
            await client.send(
                rt.CLUSTER,
                version=good.version(rt.CLUSTER),
                nonce=pushed[rt.CLUSTER].nonce,
                error="cluster outbound|audit: connect_timeout must be greater than 0s",
            )
            await client.expect_nothing()
            assert metric(server, "interstate_xds_nacks_total", type="CDS") == 1
            cds = server.status()[NODE].types["CDS"]
            assert cds.acked == good.version(rt.CLUSTER)
            assert cds.nack is not None and cds.nack.version == rejected.version(rt.CLUSTER)
            assert "connect_timeout must be greater than 0s" in cds.nack.message
            assert not server.acked(NODE, rt.CLUSTER)
            for type_url in (rt.ENDPOINT, rt.LISTENER, rt.ROUTE):
                await client.ack(pushed[type_url], names=NAMES[type_url])
            await client.expect_nothing()

            # A change elsewhere (EDS only) must not drag the rejected CDS version along.
            endpoints_moved = dataclasses.replace(
                rejected,
                types={**rejected.types, rt.ENDPOINT: only_endpoints_changed().types[rt.ENDPOINT]},
            )
            assert cache.set(NODE, endpoints_moved)
            resp = await client.recv()
            assert resp.type_url == rt.ENDPOINT
            await client.ack(resp, names=NAMES[rt.ENDPOINT])
            await client.expect_nothing()
            pushes_cds = metric(server, "interstate_xds_pushes_total", type="CDS")
            assert pushes_cds == 2  # the first state and the rejected version, once each

            # A new version of the rejected type is sent; once ACKed it is the version in force.
            fixed = first()
            assert fixed.version(rt.CLUSTER) != rejected.version(rt.CLUSTER)
            cache.set(NODE, fixed)
            got = {}
            for _ in rt.ORDER:
                resp = await client.recv()
                got[resp.type_url] = resp
            assert list(got) == list(rt.ORDER)
            assert got[rt.CLUSTER].version_info == fixed.version(rt.CLUSTER)
            await client.ack(got[rt.CLUSTER])
            await client.expect_nothing()
            assert server.status()[NODE].types["CDS"].acked == fixed.version(rt.CLUSTER)
            assert server.acked(NODE, rt.CLUSTER)

    run(body())


def test_nack_with_new_names_is_not_resent_when_another_type_changes() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            for type_url in (rt.CLUSTER, rt.ENDPOINT):
                await client.send(type_url, names=NAMES[type_url])
                await client.ack(await client.recv(), names=NAMES[type_url])
            rejected = only_endpoints_changed()
            cache.set(NODE, rejected)
            bad = await client.recv()
            assert bad.type_url == rt.ENDPOINT
            # NACK while also asking for one more name.
            await client.send(
                rt.ENDPOINT,
                version=first().version(rt.ENDPOINT),
                nonce=bad.nonce,
                names=["outbound|stats", "outbound|audit"],
                error="bad endpoints",
            )
            await client.expect_nothing()
            # Only CDS changes next: CDS is pushed, the rejected EDS version is not dragged along.
            new_clusters = every_type_changed().types[rt.CLUSTER]
            clusters_moved = dataclasses.replace(rejected, types={**rejected.types, rt.CLUSTER: new_clusters})
            assert cache.set(NODE, clusters_moved)
            resp = await client.recv()
            assert resp.type_url == rt.CLUSTER
            await client.expect_nothing()
            assert metric(server, "interstate_xds_pushes_total", type="EDS") == 2

    run(body())


# ---- (e) push order -------------------------------------------------------------------------


def test_snapshot_change_is_pushed_make_before_break() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            # Subscribe in the "wrong" order to show the push order is the server's.
            for type_url in reversed(rt.ORDER):
                await client.send(type_url, names=NAMES[type_url])
                await client.ack(await client.recv(), names=NAMES[type_url])
            await client.expect_nothing()

            changed = every_type_changed()
            assert all(changed.version(t) != first().version(t) for t in rt.ORDER)
            cache.set(NODE, changed)
            order = []
            for _ in rt.ORDER:
                resp = await client.recv()
                assert resp.version_info == changed.version(resp.type_url)
                order.append(rt.SHORT[resp.type_url])
            # secrets first (a rotated certificate never waits), then make-before-break
            assert order == ["SDS", "CDS", "EDS", "LDS", "RDS"]
            await client.expect_nothing()

    run(body())


def test_snapshot_change_pushes_only_subscribed_types() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            for type_url in (rt.LISTENER, rt.CLUSTER):
                await client.send(type_url)
                await client.ack(await client.recv())
            cache.set(NODE, every_type_changed())
            order = [rt.SHORT[(await client.recv()).type_url] for _ in range(2)]
            assert order == ["CDS", "LDS"]
            await client.expect_nothing()
            assert metric(server, "interstate_xds_pushes_total", type="EDS") == 0
            assert metric(server, "interstate_xds_pushes_total", type="RDS") == 0

    run(body())


# ---- (f) reconnect --------------------------------------------------------------------------


def test_reconnect_gets_everything_again_at_the_same_version() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        snap = first()
        cache.set(NODE, snap)
        async with ads_server(cache) as server:
            async with AdsClient(server.port, NODE) as client:
                before = await subscribe_all(client)
            assert await wait_until(lambda: NODE not in server.status(), 2.0), server.status()
            assert metric(server, "interstate_xds_connected_streams") == 0

            async with AdsClient(server.port, NODE) as client:
                # Envoy reconnects with the versions it holds and no nonce.
                for type_url in rt.ORDER:
                    version = snap.version(type_url)
                    await client.send(type_url, version=version, names=NAMES[type_url])
                    resp = await client.recv()
                    assert resp.type_url == type_url
                    assert resp.version_info == before[type_url].version_info == version
                    assert list(resp.resources) == list(before[type_url].resources)
                assert server.status()[NODE].streams == 1

    run(body())


# ---- (g) EDS subscription change ------------------------------------------------------------


def test_eds_subscription_change_gets_just_those_names() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        snap = snapshot_of(PROXY, MESH_WITH_AUDIT, STATS_AND_AUDIT, CREDS)
        cache.set(NODE, snap)
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            await client.send(rt.ENDPOINT, names=["outbound|stats"])
            resp = await client.recv()
            assert set(decode(resp)) == {"outbound|stats"}

            both = ["outbound|stats", "outbound|audit"]
            await client.ack(resp, names=both)  # matching nonce, new names
            resp = await client.recv()
            assert resp.version_info == snap.version(rt.ENDPOINT)
            assert set(decode(resp)) == set(both)

            await client.ack(resp, names=["outbound|audit", "outbound|gone"])
            resp = await client.recv()
            assert set(decode(resp)) == {"outbound|audit"}  # unknown names are left out

            await client.ack(resp, names=["outbound|audit", "outbound|gone"])  # plain ACK
            await client.expect_nothing()

    run(body())


# ---- re-request: a second request for an answered nonce (cluster warming) ------------------


def test_rerequest_for_an_acked_nonce_gets_the_resources_again() -> None:
    """When a cluster is updated but its endpoints are not, Envoy re-creates the cluster, which
    waits ("warms") for its EDS; Envoy asks again with the nonce it already ACKed. Without an
    answer the update never takes effect and CDS is never ACKed (seen with a real Envoy)."""

    async def body() -> None:
        cache = SnapshotCache()
        snap = first()
        cache.set(NODE, snap)
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            got = await subscribe_all(client)
            eds = got[rt.ENDPOINT]
            acks = metric(server, "interstate_xds_acks_total", type="EDS")

            await client.ack(eds, names=NAMES[rt.ENDPOINT])  # the same request a second time
            again = await client.recv()
            assert again.type_url == rt.ENDPOINT
            assert again.version_info == eds.version_info == snap.version(rt.ENDPOINT)
            assert again.nonce != eds.nonce
            assert list(again.resources) == list(eds.resources)
            assert metric(server, "interstate_xds_acks_total", type="EDS") == acks  # not an ACK

            await client.ack(again, names=NAMES[rt.ENDPOINT])  # its ACK is a plain ACK
            await client.expect_nothing()
            assert metric(server, "interstate_xds_acks_total", type="EDS") == acks + 1

    run(body())


def test_rerequest_after_nack_does_not_resend_the_rejected_version() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            await client.send(rt.ENDPOINT, names=NAMES[rt.ENDPOINT])
            good = await client.recv()
            await client.ack(good, names=NAMES[rt.ENDPOINT])
            cache.set(NODE, only_endpoints_changed())
            bad = await client.recv()
            for _ in range(2):  # Envoy repeats error_detail in requests until a good update
                await client.send(
                    rt.ENDPOINT,
                    version=good.version_info,
                    nonce=bad.nonce,
                    names=NAMES[rt.ENDPOINT],
                    error="no",
                )
            await client.expect_nothing()
            assert metric(server, "interstate_xds_nacks_total", type="EDS") == 1

    run(body())


# ---- (h) identical snapshot -----------------------------------------------------------------


def test_identical_snapshot_wakes_nobody() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            await subscribe_all(client)
            pushes = total_pushes(server)
            again = first()  # a new object with the same content
            assert again is not cache.get(NODE)
            assert cache.set(NODE, again) is False
            await client.expect_nothing()
            assert total_pushes(server) == pushes

    run(body())


# ---- (i) consistency ------------------------------------------------------------------------


def test_check_consistent_refuses_listener_with_missing_route() -> None:
    res = compile_mesh(PROXY, MESH, STATS, CREDS)
    check_consistent(res)  # the compiled resources are fine
    broken = dataclasses.replace(res, routes=tuple(r for r in res.routes if r.name != "outbound"))
    missing = "listener 'outbound' refers to missing route 'outbound'"
    with pytest.raises(SnapshotError, match=missing):
        Snapshot.from_resources(broken)


def test_check_consistent_refuses_no_listeners() -> None:
    res = compile_mesh(PROXY, MESH, STATS, CREDS)
    with pytest.raises(SnapshotError, match="no listeners"):
        Snapshot.from_resources(dataclasses.replace(res, listeners=()))


def test_check_consistent_refuses_eds_cluster_without_endpoints() -> None:
    res = compile_mesh(PROXY, MESH, STATS, CREDS)
    with pytest.raises(SnapshotError, match="'outbound\\|stats' has no ClusterLoadAssignment"):
        Snapshot.from_resources(dataclasses.replace(res, endpoints=()))


# ---- (j) pre-serialized bytes ---------------------------------------------------------------


@pytest.mark.parametrize("type_url", rt.ORDER, ids=[rt.SHORT[t] for t in rt.ORDER])
def test_preserialized_body_equals_protobuf_built_response(type_url: str) -> None:
    res = compile_mesh(PROXY, MESH_WITH_AUDIT, STATS_AND_AUDIT, CREDS)
    snap = Snapshot.from_resources(res)
    messages = {
        rt.CLUSTER: {c.name: c for c in res.clusters},
        rt.ENDPOINT: {e.cluster_name: e for e in res.endpoints},
        rt.LISTENER: {x.name: x for x in res.listeners},
        rt.ROUTE: {r.name: r for r in res.routes},
        rt.SECRET: {x.name: x for x in res.secrets},
    }[type_url]

    def packed(msg: Message) -> any_pb2.Any:
        # Deterministic like the snapshot: map fields (endpoint metadata is a Struct) would
        # otherwise serialize in hash order, and Any compares its value as bytes.
        return any_pb2.Any(type_url=type_url, value=msg.SerializeToString(deterministic=True))

    expected = discovery_pb2.DiscoveryResponse(
        version_info=snap.version(type_url),
        resources=[packed(messages[n]) for n in sorted(messages)],
        type_url=type_url,
        nonce="42",
    )
    wire = response(snap.types[type_url].body(None), "42")
    parsed = discovery_pb2.DiscoveryResponse.FromString(wire)
    assert parsed == expected
    assert wire == expected.SerializeToString(deterministic=True)  # field order 1, 2…, 4, 5
    # And each resource unpacks to the very message compiled (independent of byte order).
    assert [m for m in decode(parsed).values()] == [messages[n] for n in sorted(messages)]

    # A named subset (EDS/RDS) is the same response with only those resources.
    if type_url not in rt.WILDCARD:
        name = sorted(messages)[-1]
        subset = discovery_pb2.DiscoveryResponse.FromString(response(snap.types[type_url].body(frozenset({name})), "7"))
        expected_subset = discovery_pb2.DiscoveryResponse(
            version_info=snap.version(type_url),
            resources=[packed(messages[name])],
            type_url=type_url,
            nonce="7",
        )
        assert subset == expected_subset


# ---- stream without a node ------------------------------------------------------------------


def test_first_request_without_node_id_is_refused() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, "") as client:
            await client.send(rt.CLUSTER)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.recv()
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "node.id" in (caught.value.details() or "")
            closed = lambda: metric(server, "interstate_xds_connected_streams") == 0  # noqa: E731
            assert await wait_until(closed, 2.0)

    run(body())


def test_a_snapshot_removed_and_set_again_reaches_the_open_stream() -> None:
    # The supervisor removes a proxy's snapshot (e.g. the Gateway went away) and may set it
    # again later (the change was rolled back); the proxy's open stream must get the new state.
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            await subscribe_all(client)
            cache.remove(NODE)
            await client.expect_nothing()  # nothing to send: Envoy keeps what it has
            cache.set(NODE, every_type_changed())
            got = {(await client.recv()).type_url for _ in rt.ORDER}
            assert got == set(rt.ORDER)
            assert server.acked(NODE, rt.CLUSTER) is False  # sent, not yet ACKed

    run(body())


def test_rejections_reports_pending_and_nacked_nodes() -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, first())
        async with ads_server(cache) as server, AdsClient(server.port, NODE) as client:
            await subscribe_all(client)
            assert server.rejections([NODE]) == (set(), {})
            cache.set(NODE, every_type_changed())
            pushed = [await client.recv() for _ in rt.ORDER]
            assert server.rejections([NODE])[0] == {NODE}  # answers outstanding
            for resp in pushed:
                if resp.type_url == rt.ROUTE:
                    # Envoy's NACK: the version it still holds, the nonce it answers, the error
                    await client.send(
                        rt.ROUTE,
                        version=first().version(rt.ROUTE),
                        nonce=resp.nonce,
                        names=NAMES[rt.ROUTE],
                        error="route rejected for the test",
                    )
                else:
                    await client.ack(resp, names=NAMES[resp.type_url])
            nacks = await server.wait_settled([NODE], timeout=2.0)
            assert nacks == {NODE: ["RDS: route rejected for the test"]}

    run(body())
