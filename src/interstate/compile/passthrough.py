"""Calls to hosts no resource declares: refused (REGISTRY_ONLY, the default) or passed through.

With the Mesh's `outboundTrafficPolicy.mode: ALLOW_ANY`, a side-car sends a call for an
undeclared host to that host itself, through Envoy's dynamic forward proxy (the host and port
come from the request's Host header; names are resolved by Envoy, IPv4 only). The mesh's
guarantees that need to know the callee (mTLS identity, TrafficPolicy) do not apply there; the
boundary header allow-list does, and the host's own addresses stay out of reach (`egress`). Either way the access log's route (`undeclared` or
`passthrough`) and authority let the control plane count such calls per host.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import dynamic_forward_proxy_pb2 as dfp_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_pb2

from interstate.compile import egress
from interstate.compile.common import duration, pack
from interstate.model.index import MeshIndex
from interstate.model.mesh import OutboundMode

CLUSTER = "outbound|passthrough"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ROUTE = "passthrough"
REFUSED_ROUTE = "undeclared"
CONNECT_TIMEOUT_S = 1.0
TIMEOUT_S = 15.0


def allowed(index: MeshIndex) -> bool:
    return index.mesh.outbound_traffic_policy.mode is OutboundMode.ALLOW_ANY


def _dns_cache() -> dns_cache_pb2.DnsCacheConfig:
    return dns_cache_pb2.DnsCacheConfig(name="passthrough", dns_lookup_family=cluster_pb2.Cluster.V4_ONLY)


def cluster(host_addresses: tuple[str, ...] = ()) -> cluster_pb2.Cluster:
    """Envoy's dynamic forward proxy, refusing the host's own addresses (`egress`)."""
    config = dfp_cluster_pb2.ClusterConfig(dns_cache_config=_dns_cache())
    out = cluster_pb2.Cluster(
        name=CLUSTER,
        connect_timeout=duration(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name="envoy.clusters.dynamic_forward_proxy", typed_config=pack(config)
        ),
    )
    options = http_options_pb2.HttpProtocolOptions(
        # what Envoy insists on for this cluster type (they matter only to TLS, which it does not originate)
        upstream_http_protocol_options=protocol_pb2.UpstreamHttpProtocolOptions(auto_sni=True, auto_san_validation=True)
    )
    options.explicit_http_config.http_protocol_options.SetInParent()
    out.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(egress.guard(options, host_addresses)))
    return out


def http_filter() -> hcm_pb2.HttpFilter:
    config = dfp_filter_pb2.FilterConfig(dns_cache_config=_dns_cache())
    return hcm_pb2.HttpFilter(name="envoy.filters.http.dynamic_forward_proxy", typed_config=pack(config))


def route() -> rc.Route:
    return rc.Route(
        name=ROUTE,
        match=rc.RouteMatch(prefix="/"),
        route=rc.RouteAction(cluster=CLUSTER, timeout=duration(TIMEOUT_S)),
    )
