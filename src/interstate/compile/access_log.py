"""The one access-log format of every proxy: a JSON line per HTTP call or TCP connection.

What `telemetry` reads back (status, the boundary ledger, policy coverage): field names are an
interface. Written to a file Envoy reopens when asked (log rotation), or to stdout in Kubernetes.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from google.protobuf import struct_pb2

from interstate.compile import boundary
from interstate.compile.common import pack
from interstate.compile.proxy import Proxy
from interstate.model.index import MeshIndex


def build(index: MeshIndex, direction: str, proxy: Proxy) -> accesslog_pb2.AccessLog:
    fields = {
        "time": "%START_TIME%",
        "proxy": proxy.node_id,
        "service": proxy.service or proxy.role.value,
        "direction": direction,
        "method": "%REQ(:METHOD)%",
        "authority": "%REQ(:AUTHORITY)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "grpc": "%GRPC_STATUS(NUMBER)%",  # a gRPC call's own status (its HTTP status is 200)
        "flags": "%RESPONSE_FLAGS%",
        "upstream": "%UPSTREAM_HOST%",
        "cluster": "%UPSTREAM_CLUSTER%",
        "duration_ms": "%DURATION%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "route": "%ROUTE_NAME%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "policy": f"%REQ({index.mesh.policy_header.upper()})%",
        "peer": "%DOWNSTREAM_PEER_URI_SAN%",
        "tls": "%DOWNSTREAM_TLS_VERSION%",
        "upstream_peer": "%UPSTREAM_PEER_URI_SAN%",
        "stripped": boundary.ACCESS_LOG_FIELD,
    }
    json_format = struct_pb2.Struct()
    json_format.update(fields)
    log_format = substitution_format_string_pb2.SubstitutionFormatString(json_format=json_format)
    if proxy.access_log:  # a file Envoy reopens when asked (log rotation, standalone.logs)
        to_file = file_pb2.FileAccessLog(path=proxy.access_log, log_format=log_format)
        return accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=pack(to_file))
    stdout = stream_pb2.StdoutAccessLog(log_format=log_format)  # Kubernetes: the container's log
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=pack(stdout))
