"""What a running mesh is doing, in every mode: per service its replicas, and what its callers'
Envoys saw (retries, overflows, timeouts, ejections, recent failures in words).

A source supplies what only it knows: each replica's state and processes (standalone: its
units; Kubernetes: its pods), as `status.ReplicaStatus`; the proxies that call services and where
their stats are read (`Caller`: an admin socket, or a pod's metrics port); and which address is
which replica. This module joins that with the mesh index into `status.ServiceStatus` and
`status.Resilience`, so `interstate status` says the same things whichever source runs the mesh.
It only reads (Envoy stats and logs through `telemetry.envoys`); the source decides whom to ask.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from interstate.compile import names
from interstate.compile.proxy import Proxy
from interstate.core.status import ReplicaState, ReplicaStatus, Resilience, ServiceStatus
from interstate.model.index import MeshIndex
from interstate.telemetry import envoys


@dataclass(frozen=True)
class Caller:
    """A proxy whose Envoy calls services, and where what it saw is read (`telemetry.envoys.Caller`)."""

    proxy: Proxy
    reads: envoys.Caller


def services(index: MeshIndex, replicas: Mapping[str, Sequence[ReplicaStatus]]) -> dict[str, ServiceStatus]:
    """Every workload of the mesh with its replicas as the source reports them (in its order):
    how many it asks for, how many are ready, its policy and mutual-TLS mode."""
    out = {}
    for name, workload in index.workloads.items():
        found = list(replicas.get(name, ()))
        out[name] = ServiceStatus(
            workload.spec.replicas,
            sum(1 for r in found if r.state is ReplicaState.READY),
            workload.injected,
            index.policy_for(workload),
            index.mtls_mode(workload).value if workload.injected else "DISABLED (not injected)",
            found,
        )
    return out


async def resilience(
    http: httpx.AsyncClient, index: MeshIndex, callers: Sequence[Caller], replica_at: Mapping[str, str]
) -> dict[str, Resilience]:
    """Per service that has callers, what they saw of it: counters summed over them, who is
    ejected now (named by `replica_at`, "address:port" -> replica; hosts that are no replica any
    more, removed by an apply or a scale, are left out), recent failures, the fault rehearsed."""
    out: dict[str, Resilience] = {}
    for service in index.workloads:
        cluster = names.outbound_cluster(service)
        reads = [c.reads for c in callers if service in index.callees(c.proxy.caller)]
        if not reads:
            continue
        counts = await asyncio.gather(*(envoys.counters(http, c, cluster) for c in reads))
        ejected = [
            dataclasses.replace(e, replica=replica_at[e.host])
            for c in reads
            for e in envoys.ejections(c, cluster)
            if e.host in replica_at
        ]
        policy = index.traffic_policies.get(service)
        fault = policy.spec.fault if policy else None
        out[service] = Resilience(
            [c.node for c in reads],
            {key: sum(c.get(key, 0) for c in counts) for key in envoys.COUNTERS},
            ejected,
            envoys.recent_failures(reads, cluster),
            None if fault is None else fault.describe(),
        )
    return out
