"""EDS: for each service a proxy calls, the ready replicas that serve it."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import struct_pb2

from interstate.compile import clusters, names
from interstate.compile.common import socket_address
from interstate.compile.proxy import Proxy
from interstate.model.index import MeshIndex


def build(index: MeshIndex, proxy: Proxy) -> list[endpoint_pb2.ClusterLoadAssignment]:
    # ExternalServices carry their own address; only mesh services get endpoints over EDS
    return [assignment(index, service) for service in clusters.callees(index, proxy) if service not in index.externals]


def assignment(index: MeshIndex, service: str) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoints = []
    for ep in index.endpoints_of(service):
        metadata = base_pb2.Metadata()
        labels = struct_pb2.Struct()
        labels.update({"version": ep.version, "replica": str(ep.replica)})
        metadata.filter_metadata["interstate"].CopyFrom(labels)
        lb_endpoints.append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=socket_address(ep.address, ep.port)),
                metadata=metadata,
            )
        )
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=names.outbound_cluster(service),
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
    )
