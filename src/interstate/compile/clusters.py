"""CDS: the clusters one proxy needs — one per service it may call, plus its own app.

A caller's cluster for a service carries that service's TrafficPolicy. Outlier detection is
compiled for fast fail: `max_ejection_percent` defaults to 100 and the panic threshold is 0, so
once every replica is ejected Envoy answers 503 at once (flag UH) instead of trying them anyway.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from interstate.compile import names, tls
from interstate.compile.common import ads, duration, socket_address
from interstate.compile.proxy import Credentials, Proxy, Role
from interstate.model.index import MeshIndex
from interstate.model.traffic_policy import OutlierDetection

CONNECT_TIMEOUT_S = 1.0


def build(index: MeshIndex, proxy: Proxy, credentials: Credentials | None = None) -> list[cluster_pb2.Cluster]:
    clusters = [outbound(index, service, secure=credentials is not None) for service in callees(index, proxy)]
    if proxy.role is Role.SIDECAR:
        clusters.append(local_app(proxy))
    return clusters


def callees(index: MeshIndex, proxy: Proxy) -> list[str]:
    """Services this proxy may send requests to, sorted."""
    if proxy.role is Role.INGRESS:
        gateway = index.gateway
        return sorted({r.service for r in gateway.spec.routes}) if gateway else []
    workload = index.workloads.get(proxy.service)
    return sorted(workload.spec.calls) if workload else []


def outbound(index: MeshIndex, service: str, secure: bool = False) -> cluster_pb2.Cluster:
    """How callers reach `service`: EDS endpoints, its TrafficPolicy, and mutual TLS when this
    proxy has credentials and `service` runs with a side-car."""
    cluster = cluster_pb2.Cluster(
        name=names.outbound_cluster(service),
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration(CONNECT_TIMEOUT_S),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads()),
    )
    workload = index.workloads.get(service)
    if secure and workload is not None and workload.injected:
        cluster.transport_socket.CopyFrom(tls.upstream(index.mesh.trust_domain, service))
    policy = index.traffic_policies.get(service)
    if policy is not None and policy.spec.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(outlier_detection(policy.spec.outlier_detection))
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=0))
    return cluster


def outlier_detection(spec: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=spec.consecutive_errors),
        interval=duration(spec.interval),
        base_ejection_time=duration(spec.base_ejection_time),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=spec.max_ejection_percent),
        enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=100),
        # Only the 5xx rule ejects; success-rate ejection needs volume a small mesh lacks.
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
    )


def local_app(proxy: Proxy) -> cluster_pb2.Cluster:
    name = names.inbound_cluster(proxy.service)
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(CONNECT_TIMEOUT_S),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=socket_address("127.0.0.1", proxy.app_port)
                            )
                        )
                    ]
                )
            ],
        ),
    )
