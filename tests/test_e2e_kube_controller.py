"""End to end: fake kube-apiserver -> kube.controller -> the real AdsServer -> a real Envoy.

The cluster (tests/helpers_kube.py, real HTTPS on 127.0.0.1) holds two Workload CRs (`results`
calls `stats`; `stats` runs without side-car), the injected pod of `results` (pod IP 127.0.0.1)
and an EndpointSlice of `stats` pointing at an upstream the test starts. An Envoy started as that
pod's side-car (node `sidecar~<pod>.<namespace>`) gets its routes and clusters from the
controller, and a request through it reaches the upstream; a MODIFIED EndpointSlice moves it to
a second upstream; an invalid TrafficPolicy is refused and traffic keeps flowing on the last good
config. No kube-apiserver exists on this machine: the fake speaks its list/watch protocol.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers_kube import TOKEN, fake_apiserver
from helpers_xds import ads_server, envoy, free_port, run, upstream, wait_until

from interstate.kube.bootstrap import ProxyPorts
from interstate.kube.controller import ENDPOINT_SLICES, PODS, Controller, ControllerSettings
from interstate.kube.watch import ApiSettings
from interstate.xds import resources as rt
from interstate.xds.cache import SnapshotCache

pytestmark = pytest.mark.e2e

WORKLOADS = "/apis/mesh.codifyhq.io/v1/workloads"
POLICIES = "/apis/mesh.codifyhq.io/v1/trafficpolicies"
NODE = "sidecar~results-5f7d8-x2x9q.elections"


def workload(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "elections", "annotations": annotations or {}}
    return {"apiVersion": "mesh.codifyhq.io/v1", "kind": "Workload", "metadata": metadata, "spec": spec}


def stats_slice(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "stats-7xk2p",
            "namespace": "elections",
            "labels": {"kubernetes.io/service-name": "stats"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def results_pod(app_port: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "results-5f7d8-x2x9q",
            "namespace": "elections",
            "labels": {"app": "results"},
            "annotations": {"mesh.codifyhq.io/injected": "0.1.0"},
        },
        "spec": {"containers": [{"name": "results", "ports": [{"name": "http", "containerPort": app_port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    }


async def served_by(http: httpx.AsyncClient) -> str:
    response = await http.get("http://stats:8080/results/today")
    assert response.status_code == 200, response.text
    server: str = response.json()["server"]
    return server


def test_the_controller_feeds_a_real_envoy_from_the_cluster(tmp_path: Path) -> None:
    async def body() -> None:
        ports = ProxyPorts(admin=free_port(), outbound=free_port(), inbound=free_port(), ready=free_port())
        with upstream("stats-a") as port_a, upstream("stats-b") as port_b:
            async with fake_apiserver(tmp_path) as api:
                api.put(WORKLOADS, workload("results", {"port": 8080, "calls": ["stats"]}))
                api.put(WORKLOADS, workload("stats", {"port": 8080}, {"mesh.codifyhq.io/inject": "disabled"}))
                api.put(ENDPOINT_SLICES.path, stats_slice(port_a))
                api.put(PODS.path, results_pod(free_port()))
                settings = ControllerSettings(ApiSettings(api.url, token=TOKEN, ca_file=api.ca_file), ports)
                cache = SnapshotCache()
                controller = Controller(settings, cache)
                await controller.start()
                try:
                    assert await wait_until(lambda: cache.get(NODE) is not None, 10), controller.rejected
                    async with ads_server(cache) as server, envoy(tmp_path, NODE, "results", server.port):
                        outbound = f"http://127.0.0.1:{ports.outbound}"
                        async with httpx.AsyncClient(proxy=outbound, timeout=5) as http:
                            for type_url in rt.ORDER:
                                assert await server.wait_acked([NODE], type_url, 10), server.status()
                            assert await served_by(http) == "stats-a"

                            # the EndpointSlice moves (a burst of 5 changes: one debounced push),
                            # and the request follows
                            pushes = controller.pushes
                            for port in (port_a, free_port(), port_a, free_port(), port_b):
                                api.emit(ENDPOINT_SLICES.path, "MODIFIED", stats_slice(port))
                            assert await wait_until(lambda: controller.pushes > pushes, 5)
                            await asyncio.sleep(0.2)
                            assert controller.pushes == pushes + 1
                            assert await _eventually(http, "stats-b")

                            # an invalid CR: logged, held in `rejected`, the last good config stays
                            bad = {
                                "apiVersion": "mesh.codifyhq.io/v1",
                                "kind": "TrafficPolicy",
                                "metadata": {"name": "stats-breaker", "namespace": "elections"},
                                "spec": {"destination": {"service": "stats"}, "timeout": "3x"},
                            }
                            api.emit(POLICIES, "ADDED", bad)
                            assert await wait_until(lambda: bool(controller.rejected), 5)
                            [issue] = controller.rejected
                            assert (issue.file, issue.field) == ("elections/stats-breaker", "spec.timeout")
                            assert await served_by(http) == "stats-b"

                            # fixed: taken, and traffic still flows
                            good = copy.deepcopy(bad)
                            good["spec"]["timeout"] = "3s"
                            api.emit(POLICIES, "MODIFIED", good)
                            assert await wait_until(lambda: not controller.rejected, 5)
                            assert controller.config is not None
                            assert "TrafficPolicy stats-breaker" in {r.ref for r in controller.config.resources}
                            assert await served_by(http) == "stats-b"

                            # the pod goes away: its snapshot is removed
                            api.emit(PODS.path, "DELETED", results_pod(0))
                            assert await wait_until(lambda: cache.get(NODE) is None, 5)
                finally:
                    await controller.stop()

    run(body(), timeout=60)


async def _eventually(http: httpx.AsyncClient, server: str, timeout: float = 5.0) -> bool:
    """True once a request is served by `server` (Envoy applies EDS a moment after the push)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await served_by(http) == server:
            return True
    return False
