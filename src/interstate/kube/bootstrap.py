"""The Envoy bootstrap of an injected side-car in Kubernetes: `compile.bootstrap`'s, adapted to a pod.

Called by `kube/inject.py`, which puts the result in the proxy container's `--config-yaml`
argument. Pure: settings in, a JSON-able dict out. Three things differ from standalone mode:

- **The xDS connection.** A pod has no bootstrap certificate (the webhook cannot issue one per
  pod: the pod has no name yet, and admission must have no side effects). Envoy connects with
  Google gRPC over TLS, checking the control plane's certificate against the mesh CA bundle
  (inline: it is public) under the name `xds.interstate`, the DNS SAN the control plane's
  certificate carries. It proves who it is with its pod's projected service-account token
  (audience `interstate-xds` by default), sent as `authorization: Bearer <token>` by Envoy's
  `envoy.grpc_credentials.file_based_metadata` plugin, which reads the file on every new stream,
  so the kubelet's rotation of the token is picked up. The control plane is to check it with a
  TokenReview and take the pod's namespace and service account from the answer, never from the
  node metadata below. Workload certificates then come over SDS on that stream, as in standalone
  mode: nothing secret is mounted but the token.
- **Who the node is** is known only when the pod starts: node ID and cluster come from Envoy's
  `--service-node` / `--service-cluster` flags (which override the bootstrap's), filled from the
  downward API; the node metadata carries what the injector knew (service, policy, ...).
- **Readiness and metrics.** The admin interface stays on 127.0.0.1; a static listener on
  `ports.ready` (all addresses) serves `GET /ready` and `GET /stats/prometheus` only, proxied to
  the admin, so the kubelet can probe it and Prometheus can scrape it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interstate.compile import bootstrap

XDS_SERVER_NAME = "xds.interstate"  # the DNS SAN of the control plane's certificate (standalone too)
ADMIN_CLUSTER = "interstate-admin"
READY_LISTENER = "interstate-ready"
# What the ready port serves from the admin interface: the kubelet's probe, and Envoy's metrics
# for Prometheus (what `interstate manifests autoscale`'s KEDA query reads). Nothing else.
PUBLIC_ADMIN_PATHS = ("/ready", "/stats/prometheus")
TOKEN_CREDENTIALS = "envoy.grpc_credentials.file_based_metadata"
_TYPE = "type.googleapis.com/"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "envoy.extensions.filters.http.router.v3.Router"
_TOKEN_CONFIG = "envoy.config.grpc_credential.v3.FileBasedMetadataConfig"
NODE_PLACEHOLDER = "sidecar~unknown"  # always overridden by --service-node


@dataclass(frozen=True)
class ProxyPorts:
    """The side-car's ports in the pod (Istio-like numbers, so a cluster's habits carry over)."""

    admin: int = 15000  # Envoy admin, 127.0.0.1 only
    outbound: int = 15001  # the apps' HTTP proxy (HTTP_PROXY), 127.0.0.1 only
    inbound: int = 15006  # mutual TLS from other side-cars, on the pod IP
    ready: int = 15021  # GET /ready for the kubelet, on the pod IP

    def all(self) -> tuple[int, ...]:
        return (self.admin, self.outbound, self.inbound, self.ready)


def split_address(address: str) -> tuple[str, int]:
    """ "host:port" -> (host, port); ValueError saying what is expected otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. interstate-xds.interstate-system.svc:15012)")
    return host, int(port)


def sidecar(
    *,
    service: str,
    xds_address: str,
    ca_bundle_pem: str,
    token_path: str,
    ports: ProxyPorts,
    policy_header: str,
    metadata: dict[str, str],
) -> dict[str, Any]:
    """The bootstrap of one injected side-car (see the module docstring)."""
    host, port = split_address(xds_address)
    config = bootstrap.build(
        NODE_PLACEHOLDER,
        service,
        ports.admin,
        host,
        port,
        joined_headers=(policy_header,),
    )
    config["node"]["metadata"] = dict(metadata)
    config["dynamic_resources"]["ads_config"]["grpc_services"] = [
        {
            "google_grpc": {
                "target_uri": xds_address,
                "stat_prefix": "xds",
                "channel_credentials": {"ssl_credentials": {"root_certs": {"inline_string": ca_bundle_pem}}},
                "call_credentials": [
                    {
                        "from_plugin": {
                            "name": TOKEN_CREDENTIALS,
                            "typed_config": {
                                "@type": _TYPE + _TOKEN_CONFIG,
                                "secret_data": {"filename": token_path},
                                "header_key": "authorization",
                                "header_prefix": "Bearer ",
                            },
                        }
                    }
                ],
                "credentials_factory_name": TOKEN_CREDENTIALS,
                "channel_args": {"args": {"grpc.ssl_target_name_override": {"string_value": XDS_SERVER_NAME}}},
            }
        }
    ]
    # Google gRPC dials the control plane itself: the static xDS cluster of standalone mode goes.
    config["static_resources"] = {
        "listeners": [_ready_listener(ports.ready)],
        "clusters": [_admin_cluster(ports.admin)],
    }
    return config


def _ready_listener(port: int) -> dict[str, Any]:
    return {
        "name": READY_LISTENER,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _TYPE + _HCM,
                            "stat_prefix": "ready",
                            "route_config": {
                                "name": READY_LISTENER,
                                "virtual_hosts": [
                                    {
                                        "name": "ready",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {
                                                    "path": path,
                                                    "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                                                },
                                                "route": {"cluster": ADMIN_CLUSTER, "timeout": "5s"},
                                            }
                                            for path in PUBLIC_ADMIN_PATHS
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                {"name": "envoy.filters.http.router", "typed_config": {"@type": _TYPE + _ROUTER}}
                            ],
                        },
                    }
                ]
            }
        ],
    }


def _admin_cluster(port: int) -> dict[str, Any]:
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    ]
                }
            ],
        },
    }
