"""Immutable per-proxy snapshots: resources serialized once, versioned by a hash of their content.

A `Snapshot` holds, per type URL, each resource already packed as `google.protobuf.Any` bytes
and the wire bytes of a DiscoveryResponse without its nonce. A stream appends its nonce (a
protobuf field can be concatenated) so every stream shares the same bytes: serialization happens
once per change, not once per stream. `check_consistent` refuses a snapshot that refers to
routes or endpoints it does not contain, or that would empty a proxy's listeners or clusters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from interstate.compile import ProxyResources
from interstate.errors import SnapshotError
from interstate.xds import resources as rt

_PREFIX = "type.googleapis.com/"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def any_bytes(type_url: str, message: Message) -> bytes:
    # google.protobuf.Any: type_url = 1, value = 2
    return field_bytes(1, type_url.encode()) + field_bytes(2, message.SerializeToString(deterministic=True))


@dataclass(frozen=True)
class TypeSet:
    """All resources of one type for one proxy."""

    type_url: str
    version: str
    resources: Mapping[str, bytes]  # name -> serialized Any
    _full_body: bytes = field(repr=False, default=b"")

    @classmethod
    def build(cls, type_url: str, named: Iterable[tuple[str, Message]]) -> TypeSet:
        return cls.from_packed(type_url, ((name, any_bytes(type_url, msg)) for name, msg in named))

    @classmethod
    def from_packed(cls, type_url: str, packed: Iterable[tuple[str, bytes]]) -> TypeSet:
        """From resources already serialized as Any bytes (see `any_bytes`), e.g. shared by many
        proxies and serialized once."""
        items = sorted(packed)
        digest = hashlib.sha256(type_url.encode())
        for name, data in items:
            digest.update(field_bytes(1, name.encode()) + field_bytes(2, data))
        version = digest.hexdigest()[:16]
        resources = MappingProxyType(dict(items))
        return cls(type_url, version, resources, cls._body(type_url, version, [d for _, d in items]))

    @staticmethod
    def _body(type_url: str, version: str, anys: list[bytes]) -> bytes:
        # DiscoveryResponse: version_info = 1, resources = 2, type_url = 4 (nonce = 5 is per stream)
        return (
            field_bytes(1, version.encode())
            + b"".join(field_bytes(2, a) for a in anys)
            + field_bytes(4, type_url.encode())
        )

    def body(self, names: frozenset[str] | None) -> bytes:
        """Response bytes without nonce: every resource, or only those `names` that exist."""
        if names is None or self.type_url in rt.WILDCARD:
            return self._full_body
        return self._body(
            self.type_url, self.version, [self.resources[n] for n in sorted(names) if n in self.resources]
        )


def response(body: bytes, nonce: str) -> bytes:
    return body + field_bytes(5, nonce.encode())


@dataclass(frozen=True)
class Snapshot:
    types: Mapping[str, TypeSet]

    @classmethod
    def from_resources(cls, res: ProxyResources) -> Snapshot:
        return cls.from_types(
            static_types(res), TypeSet.build(rt.ENDPOINT, ((e.cluster_name, e) for e in res.endpoints))
        )

    @classmethod
    def from_types(cls, static: Mapping[str, TypeSet], endpoints: TypeSet) -> Snapshot:
        """From the config part (`static_types`) and the endpoints part, built separately."""
        return cls(MappingProxyType({**static, rt.ENDPOINT: endpoints}))

    def version(self, type_url: str) -> str:
        return self.types[type_url].version

    @property
    def versions(self) -> dict[str, str]:
        return {t: s.version for t, s in self.types.items()}


def static_types(res: ProxyResources) -> dict[str, TypeSet]:
    """Every type but endpoints, after checking the whole is consistent."""
    check_consistent(res)
    return {
        rt.CLUSTER: TypeSet.build(rt.CLUSTER, ((c.name, c) for c in res.clusters)),
        rt.LISTENER: TypeSet.build(rt.LISTENER, ((x.name, x) for x in res.listeners)),
        rt.ROUTE: TypeSet.build(rt.ROUTE, ((r.name, r) for r in res.routes)),
        rt.SECRET: TypeSet.build(rt.SECRET, ((s.name, s) for s in res.secrets)),
    }


def _eds_name(cluster: cluster_pb2.Cluster) -> str | None:
    if cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def _rds_names(listener: listener_pb2.Listener) -> Iterable[str]:
    for chain in listener.filter_chains:
        for flt in chain.filters:
            manager = hcm_pb2.HttpConnectionManager()
            if flt.typed_config.Unpack(manager) and manager.HasField("rds"):
                yield manager.rds.route_config_name


def _sds_names(res: ProxyResources) -> Iterable[tuple[str, str]]:
    """(what, secret name) for every SDS secret a cluster or listener refers to."""
    contexts: list[tuple[str, Message, any_pb2.Any]] = [
        (f"cluster {c.name!r}", tls_pb2.UpstreamTlsContext(), c.transport_socket.typed_config)
        for c in res.clusters
        if c.HasField("transport_socket")
    ]
    contexts += [
        (f"listener {lst.name!r}", tls_pb2.DownstreamTlsContext(), chain.transport_socket.typed_config)
        for lst in res.listeners
        for chain in lst.filter_chains
        if chain.HasField("transport_socket")
    ]
    for what, context, packed in contexts:
        if packed.Unpack(context):
            common = context.common_tls_context
            for sds in common.tls_certificate_sds_secret_configs:
                yield what, sds.name
            if common.combined_validation_context.HasField("validation_context_sds_secret_config"):
                yield what, common.combined_validation_context.validation_context_sds_secret_config.name


def check_consistent(res: ProxyResources) -> None:
    """Every EDS cluster has its endpoints, every RDS name its route, every SDS name its secret,
    and nothing is empty."""
    problems = []
    if not res.listeners:
        problems.append("no listeners (an empty LDS response would remove every listener)")
    if not res.clusters:
        problems.append("no clusters (an empty CDS response would remove every cluster)")
    assignments = {e.cluster_name for e in res.endpoints}
    for cluster in res.clusters:
        name = _eds_name(cluster)
        if name is not None and name not in assignments:
            problems.append(f"cluster {cluster.name!r} has no ClusterLoadAssignment {name!r}")
    routes = {r.name for r in res.routes}
    for listener in res.listeners:
        for name in _rds_names(listener):
            if name not in routes:
                problems.append(f"listener {listener.name!r} refers to missing route {name!r}")
    secrets = {s.name for s in res.secrets}
    for what, name in _sds_names(res):
        if name not in secrets:
            problems.append(f"{what} refers to missing secret {name!r}")
    if problems:
        raise SnapshotError("inconsistent snapshot: " + "; ".join(problems))
