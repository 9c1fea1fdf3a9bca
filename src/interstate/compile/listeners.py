"""LDS: the listeners of one proxy, each an HTTP connection manager that takes routes over RDS.

side-car: `inbound` (other side-cars -> this replica's app) and `outbound` (the app's HTTP
proxy -> other services). ingress: `ingress` (clients -> the Gateway's routes).
Paths are normalized and slashes merged before routing, so `//x` and `/a/../x` route as `/x`.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import protocol_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2

from interstate.compile import names
from interstate.compile.common import ads, pack, socket_address
from interstate.compile.proxy import Proxy, Role
from interstate.model.index import MeshIndex

HCM = hcm_pb2.HttpConnectionManager


def build(index: MeshIndex, proxy: Proxy) -> list[listener_pb2.Listener]:
    if proxy.role is Role.INGRESS:
        return [
            http_listener(index, names.INGRESS_LISTENER, proxy.address, proxy.ingress_port, names.INGRESS_ROUTE, proxy)
        ]
    return [
        http_listener(index, names.INBOUND_LISTENER, proxy.address, proxy.inbound_port, names.INBOUND_ROUTE, proxy),
        http_listener(index, names.OUTBOUND_LISTENER, "127.0.0.1", proxy.outbound_port, names.OUTBOUND_ROUTE, proxy),
    ]


def access_log(index: MeshIndex, direction: str, proxy: Proxy) -> accesslog_pb2.AccessLog:
    fields = {
        "time": "%START_TIME%",
        "proxy": proxy.node_id,
        "direction": direction,
        "method": "%REQ(:METHOD)%",
        "authority": "%REQ(:AUTHORITY)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "upstream": "%UPSTREAM_HOST%",
        "cluster": "%UPSTREAM_CLUSTER%",
        "duration_ms": "%DURATION%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "policy": f"%REQ({index.mesh.policy_header.upper()})%",
    }
    json_format = struct_pb2.Struct()
    json_format.update(fields)
    stdout = stream_pb2.StdoutAccessLog(
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=json_format)
    )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=pack(stdout))


def http_listener(
    index: MeshIndex, name: str, address: str, port: int, route: str, proxy: Proxy
) -> listener_pb2.Listener:
    manager = HCM(
        stat_prefix=name,
        codec_type=HCM.AUTO,
        rds=hcm_pb2.Rds(config_source=ads(), route_config_name=route),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))],
        access_log=[access_log(index, name, proxy)],
        normalize_path={"value": True},
        merge_slashes=True,
        path_with_escaped_slashes_action=HCM.UNESCAPE_AND_REDIRECT,
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(allow_absolute_url={"value": True}),
        generate_request_id={"value": True},
    )
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=pack(manager),
                    )
                ]
            )
        ],
    )
