"""What one unit runs and how it is reported: pure functions of a workload or a unit's status.

The app's environment (where to listen, the side-car as its HTTP proxy, `$(VAR)` expansion),
its command line, the template digest that says which replicas are interchangeable, the endpoint
a ready unit serves, and a unit's row in `interstate status`. Called by `standalone.mesh`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from interstate.core.status import AppProcess, ReplicaState, ReplicaStatus, SidecarProcess
from interstate.model.index import Endpoint
from interstate.model.workload import Workload
from interstate.standalone.protocol import UnitStatus
from interstate.xds.sync import NodeSync


def app_environment(workload: Workload, replica: int, app_port: int, outbound_port: int | None) -> dict[str, str]:
    """The app's environment: where to listen, and the side-car as its HTTP proxy."""
    env = {
        k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env.update(
        PORT=str(app_port),
        HOST="127.0.0.1",
        PYTHONUNBUFFERED="1",
        INTERSTATE_SERVICE=workload.name,
        INTERSTATE_REPLICA=str(replica),
        INTERSTATE_VERSION=workload.spec.version,
    )
    if outbound_port is not None:
        proxy = f"http://127.0.0.1:{outbound_port}"
        env.update(HTTP_PROXY=proxy, http_proxy=proxy, NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1")
    for key, value in workload.spec.runs().env.items():
        env[key] = expand(value, env)
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes-style `$(VAR)` references; unknown ones are left as written."""
    out = text
    for key in ("PORT", "HOST", "INTERSTATE_SERVICE", "INTERSTATE_REPLICA", "INTERSTATE_VERSION"):
        out = out.replace(f"$({key})", env.get(key, ""))
    return out


def app_command(workload: Workload, env: dict[str, str]) -> tuple[str, ...]:
    argv = [expand(a, env) for a in workload.spec.runs().command]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return tuple(argv)


def template_digest(workload: Workload) -> str:
    """Replicas of workloads with the same digest are interchangeable (everything but the count)."""
    dump = workload.model_dump(mode="json", exclude={"spec": {"replicas"}})
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def endpoint_of(unit: UnitStatus, host: str) -> Endpoint | None:
    spec = unit.spec
    if unit.state is not ReplicaState.READY or not spec.service or spec.app is None:
        return None
    port = spec.proxy.inbound_port if spec.proxy is not None else spec.app.port
    return Endpoint(spec.service, spec.index, host, port, spec.version)


def replica_status(unit: UnitStatus, xds: NodeSync | None) -> ReplicaStatus:
    spec = unit.spec
    app = sidecar = None
    if spec.app is not None:
        app = AppProcess(unit.app_pid, spec.app.port, unit.restarts.get("app", 0), spec.app.log)
    if spec.proxy is not None and spec.envoy is not None:
        sidecar = SidecarProcess(
            unit.envoy_pid,
            spec.proxy.node_id,
            spec.proxy.inbound_port,
            spec.proxy.outbound_port,
            spec.envoy.admin,
            spec.envoy.requests_log,
            unit.restarts.get("envoy", 0),
        )
    return ReplicaStatus(spec.name, unit.state, spec.version, app, sidecar, xds)
