"""The static bootstrap each Envoy starts with: who it is, where its admin listens, and the ADS server.

Everything else arrives over ADS. Returned as a JSON-able dict (Envoy reads JSON with -c).
Its runtime holds the process-wide limits of `limits.runtime` (HTTP/2 rapid reset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interstate.compile import limits

XDS_CLUSTER = "interstate-xds"
ADMIN_SOCKET_MODE = 0o600
RECONNECT = {"retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"}}


@dataclass(frozen=True)
class XdsTls:
    """Mutual TLS to the control plane: the proxy's bootstrap certificate (its common name is
    the node ID, which the control plane checks) and the control plane's expected identity.
    `sds_path` is a file-based SDS resource (`xds_client_secret`) naming the certificate and
    key files; Envoy reloads them whenever a new version of that file is moved into place, so
    the certificate is rotated on disk without restarting Envoy."""

    sds_path: str
    ca_path: str
    server_identity: str


XDS_CLIENT_SECRET = "xds_client"


def xds_client_secret(cert_path: str, key_path: str) -> dict[str, Any]:
    """The content of `XdsTls.sds_path`: one SDS Secret with the bootstrap certificate's files."""
    return {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": XDS_CLIENT_SECRET,
                "tls_certificate": {
                    "certificate_chain": {"filename": cert_path},
                    "private_key": {"filename": key_path},
                },
            }
        ]
    }


def build(
    node_id: str,
    cluster: str,
    admin: str | int,
    xds_host: str,
    xds_port: int,
    xds_tls: XdsTls | None = None,
    outlier_event_log: str | None = None,
    joined_headers: tuple[str, ...] = (),
    max_connections: int | None = None,
) -> dict[str, Any]:
    """`admin`: the path of the Unix socket Envoy's admin interface listens on (mode 0600), or a
    port on 127.0.0.1. `outlier_event_log`: a file where Envoy appends a JSON line per ejection and return.
    `max_connections`: downstream connections open at once, all listeners together (the
    ingress: `limits.MAX_INGRESS_CONNECTIONS`); None for no limit of our own.
    `joined_headers`: request headers Envoy keeps as one comma-joined value when a request
    repeats them, so every matcher sees all values at once (the policy header: two values must
    not pass a check because one of them is valid)."""
    # No initial fetch timeout (Envoy's default is 15 s, after which it goes LIVE without its
    # listeners): an Envoy is ready (`/ready` 200) only once it holds its configuration, so a
    # side-car the control plane refuses or cannot reach never turns its pod or replica ready.
    ads = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    if isinstance(admin, str):  # a Unix socket only its owner may open (standalone: `telemetry.envoy_admin`)
        admin_address: dict[str, Any] = {"pipe": {"path": admin, "mode": ADMIN_SOCKET_MODE}}
    else:  # a port on 127.0.0.1 (a Kubernetes pod: only the pod's own processes share its loopback)
        admin_address = {"socket_address": {"address": "127.0.0.1", "port_value": admin}}
    bootstrap = {
        "node": {"id": node_id, "cluster": cluster or "ingress"},
        "admin": {"address": admin_address},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                # reconnect quickly to a restarted control plane (Envoy's own default starts at
                # 500 ms and doubles to 30 s); meanwhile Envoy serves its last configuration
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": RECONNECT}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        # internal listeners: a side-car's outbound listener ends an app's CONNECT tunnel in one
        # (`listeners.tunnel`), so what the app sends through it is routed like any other call
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
                },
            }
        ],
        # a static layer with our keys, then Envoy's admin layer (what it has without this)
        "layered_runtime": {
            "layers": [
                {"name": "interstate", "static_layer": limits.runtime()},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }
    if joined_headers:
        bootstrap["inline_headers"] = [
            {"inline_header_name": name, "inline_header_type": "REQUEST_HEADER"} for name in joined_headers
        ]
    if outlier_event_log is not None:
        bootstrap["cluster_manager"] = {"outlier_detection": {"event_log_path": outlier_event_log}}
    if xds_tls is not None:
        bootstrap["static_resources"]["clusters"][0]["transport_socket"] = {  # type: ignore[index]
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "xds.interstate",
                "common_tls_context": {
                    "tls_params": {
                        "tls_minimum_protocol_version": "TLSv1_3",
                        "tls_maximum_protocol_version": "TLSv1_3",
                    },
                    "alpn_protocols": ["h2"],  # gRPC servers insist on it
                    "tls_certificate_sds_secret_configs": [
                        {
                            "name": XDS_CLIENT_SECRET,
                            "sds_config": {
                                "path_config_source": {"path": xds_tls.sds_path},
                                "resource_api_version": "V3",
                            },
                        }
                    ],
                    "validation_context": {
                        "trusted_ca": {"filename": xds_tls.ca_path},
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": xds_tls.server_identity}}
                        ],
                    },
                },
            },
        }
    if max_connections is not None:
        bootstrap["overload_manager"] = limits.overload_manager(max_connections)
    return bootstrap
