"""Test helper: one proxy's compiled xDS resources as a self-contained Envoy bootstrap, and
`envoy --mode validate` on it.

Validate mode needs everything in the bootstrap, so the dynamic parts become static ones and
nothing else changes:
- EDS clusters -> STATIC clusters whose `load_assignment` is the compiled ClusterLoadAssignment
  of that cluster (or an empty one when the proxy has none);
- an HTTP connection manager's `rds` -> inline `route_config`, the compiled RouteConfiguration
  of that name;
- SDS secret references over ADS (`SdsSecretConfig` with `sds_config`) -> references to static
  `secrets` (the compiled ones), `sds_config` cleared.
The rewrite walks every message, including those packed in `Any`; an `Any` it does not change
keeps its compiled bytes. Used by tests/test_envoy_validate.py; reads `compile.ProxyResources`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.bootstrap.internal_listener.v3 import internal_listener_pb2  # noqa: F401 (its type, for the JSON)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from interstate.compile import ProxyResources, bootstrap

VALIDATE_TIMEOUT_S = 60.0


class NotSelfContained(Exception):
    """The compiled resources refer to something they do not contain (an RDS name), or pack
    a type this helper cannot open."""


@dataclass(frozen=True)
class Validation:
    """What `envoy --mode validate` said about one bootstrap."""

    returncode: int
    output: str  # stdout and stderr together
    config_path: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        return f"envoy --mode validate exited {self.returncode} for {self.config_path}:\n{self.output[-4000:]}"


# ---- dynamic -> static ----------------------------------------------------------------------


class _Staticizer:
    def __init__(self, routes: dict[str, route_pb2.RouteConfiguration]) -> None:
        self.routes = routes

    def message(self, msg: Message) -> bool:
        """Rewrite `msg` in place; True when anything changed."""
        changed = False
        if isinstance(msg, hcm_pb2.HttpConnectionManager) and msg.HasField("rds"):
            name = msg.rds.route_config_name
            if name not in self.routes:
                raise NotSelfContained(f"HTTP connection manager {msg.stat_prefix!r} uses RDS {name!r}: not compiled")
            msg.route_config.CopyFrom(self.routes[name])  # a oneof: clears `rds`
            changed = True
        if isinstance(msg, secret_pb2.SdsSecretConfig) and msg.HasField("sds_config"):
            msg.ClearField("sds_config")  # a name alone refers to a static secret
            changed = True
        if isinstance(msg, any_pb2.Any):
            return self.packed(msg) or changed
        for field, value in msg.ListFields():
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value.values():
                        changed = self.message(item) or changed
            elif field.is_repeated:
                for item in value:
                    changed = self.message(item) or changed
            else:
                changed = self.message(value) or changed
        return changed

    def packed(self, packed: any_pb2.Any) -> bool:
        type_name = packed.TypeName()
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
        except KeyError:
            raise NotSelfContained(f"cannot look inside Any of unknown type {type_name!r}") from None
        inner = message_factory.GetMessageClass(descriptor)()
        if not packed.Unpack(inner):
            raise NotSelfContained(f"cannot unpack Any of type {type_name!r}")
        if not self.message(inner):
            return False  # untouched: keep the compiled bytes
        packed.Pack(inner, deterministic=True)
        return True


def _static_cluster(cluster: cluster_pb2.Cluster, assignments: dict[str, endpoint_pb2.ClusterLoadAssignment]) -> None:
    if cluster.type != cluster_pb2.Cluster.EDS:
        return
    name = cluster.eds_cluster_config.service_name or cluster.name
    assignment = assignments.get(name, endpoint_pb2.ClusterLoadAssignment(cluster_name=name))
    cluster.ClearField("eds_cluster_config")
    cluster.type = cluster_pb2.Cluster.STATIC
    cluster.load_assignment.CopyFrom(assignment)


def static_bootstrap(
    resources: ProxyResources, node_id: str = "validate", node_cluster: str = "validate"
) -> bootstrap_pb2.Bootstrap:
    """A bootstrap holding all of `resources` statically (see the module docstring)."""
    routes = {r.name: r for r in resources.routes}
    assignments = {a.cluster_name: a for a in resources.endpoints}
    walker = _Staticizer(routes)
    out = bootstrap_pb2.Bootstrap()
    out.node.id = node_id
    out.node.cluster = node_cluster
    out.admin.address.socket_address.address = "127.0.0.1"
    out.admin.address.socket_address.port_value = 0
    # what every real bootstrap carries besides its ADS config (internal listeners)
    real = bootstrap.build(node_id, node_cluster, 0, "127.0.0.1", 1)
    json_format.ParseDict({"bootstrap_extensions": real["bootstrap_extensions"]}, out)
    static = out.static_resources
    for compiled_cluster in resources.clusters:
        cluster = static.clusters.add()
        cluster.CopyFrom(compiled_cluster)
        _static_cluster(cluster, assignments)
        walker.message(cluster)
    for compiled_listener in resources.listeners:
        listener = static.listeners.add()
        listener.CopyFrom(compiled_listener)
        walker.message(listener)
    for secret in resources.secrets:
        static.secrets.add().CopyFrom(secret)
    return out


def to_json(bootstrap: bootstrap_pb2.Bootstrap) -> dict[str, Any]:
    """The bootstrap as the JSON Envoy reads with -c (proto field names; Any keeps its @type)."""
    out: dict[str, Any] = json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)
    return out


# Keys that only dynamic (xDS) config has. Envoy's validate mode does not object to an `ads`
# config source when the bootstrap has no ADS server: it would accept an unconverted resource
# without looking at it, so a test must check that none is left.
DYNAMIC_KEYS = frozenset({"ads", "rds", "eds_cluster_config", "sds_config"})


def dynamic_leftovers(config: Any, where: str = "") -> list[str]:
    """JSON paths in `config` that still refer to dynamic resources; [] when self-contained."""
    found: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            path = f"{where}.{key}"
            if key in DYNAMIC_KEYS:
                found.append(path)
            found += dynamic_leftovers(value, path)
    elif isinstance(config, list):
        for i, item in enumerate(config):
            found += dynamic_leftovers(item, f"{where}[{i}]")
    return found


# ---- running Envoy --------------------------------------------------------------------------


def validate(envoy: Path, config: dict[str, Any], path: Path, timeout: float = VALIDATE_TIMEOUT_S) -> Validation:
    """Write `config` to `path` and ask Envoy whether it would accept it as a bootstrap."""
    path.write_text(json.dumps(config, indent=1))
    command = [
        str(envoy),
        "--mode",
        "validate",
        "-c",
        str(path),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "error",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    return Validation(done.returncode, done.stdout + done.stderr, path)
