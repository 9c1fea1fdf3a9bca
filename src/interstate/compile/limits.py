"""Envoy's own limits against hostile HTTP, in one place: sizes, counts, timeouts, HTTP/2 floods.

`listeners` applies `edge` to the ingress's connection manager (clients of the mesh) and
`inbound` to each side-car's inbound one (other proxies of the mesh); `resilience` keeps a long
route timeout from being cut by the stream idle timeout; `bootstrap` puts the runtime keys in
every Envoy. README.md "Limits at the edge" lists each value and what a client gets past it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeAlias

from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from interstate.compile.common import duration, pack

HCM: TypeAlias = hcm_pb2.HttpConnectionManager
KIB = 1024
MIB = 1024 * KIB

# -- the ingress: anyone may connect ------------------------------------------------------------
# Request line and headers together, in KiB (Envoy counts names and values): past it, 431
# (HTTP/2: the stream is reset, which is also where a CONTINUATION flood is cut). A browser
# sends 1-8 KiB (cookies); a JWT a few KiB.
MAX_REQUEST_HEADERS_KB = 32
# Headers in one request, pseudo-headers (:method, :path, ...) included: past it, 431.
MAX_HEADERS_COUNT = 64
# Request body: the buffer filter holds a body until it is complete (apps never see half of
# one) and answers 413 past this size. Requests without a body pass straight through. Routes
# for streams (gRPC, WebSocket, server-sent events: `resilience.STREAMS`) turn it off for
# themselves (`no_buffer`): their bodies flow, bounded in time by the idle timeout instead.
MAX_REQUEST_BODY_BYTES = 1 * MIB
# What Envoy reads ahead on one client connection before it stops reading (flow control).
CONNECTION_BUFFER_BYTES = 32 * KIB
# Slow clients. The headers timeout runs from a request's first byte to its last header
# (slowloris); the stream idle timeout cuts a request (or response) during which nothing moves
# for that long, e.g. a body that stops coming: 408 before the response starts.
# The connection idle timeout closes a connection without any request (HTTP/1.1 keep-alive,
# or one that never sends a byte). There is deliberately no `request_timeout` (a bound on a
# whole request): issue 12 brings long-lived streams, which idle timeouts leave alone as long
# as bytes move; a body that keeps trickling is bounded by MAX_REQUEST_BODY_BYTES instead.
REQUEST_HEADERS_TIMEOUT = timedelta(seconds=10)
STREAM_IDLE_TIMEOUT = timedelta(seconds=20)
CONNECTION_IDLE_TIMEOUT = timedelta(seconds=30)
# Connections open at once at the ingress, every client together (Envoy's overload manager,
# `envoy.resource_monitors.global_downstream_max_connections`): past it, a new connection is
# closed as it is accepted, and those open are served on. Below the usual open-files limit
# (20,000 here), which would otherwise be hit first and fail upstream connections too.
# `interstate up --max-ingress-connections`.
MAX_INGRESS_CONNECTIONS = 10_000
# HTTP/2: Envoy's edge recommendations (streams at once, flow-control windows), and its flood
# limits stated rather than inherited: frames queued for a client that does not read (PING or
# SETTINGS floods), and frames without payload in a row (empty DATA/HEADERS/CONTINUATION).
H2_MAX_CONCURRENT_STREAMS = 100
H2_INITIAL_STREAM_WINDOW_BYTES = 64 * KIB
H2_INITIAL_CONNECTION_WINDOW_BYTES = 1 * MIB
H2_MAX_OUTBOUND_FRAMES = 10_000
H2_MAX_OUTBOUND_CONTROL_FRAMES = 1_000
H2_MAX_CONSECUTIVE_EMPTY_FRAMES = 1

# -- a side-car's inbound listener: other proxies of the mesh (mutual TLS) -----------------------
# Envoy's defaults, stated: what the ingress let in (above) plus what proxies and apps add on
# the way (x-forwarded-*, x-request-id, the policy header, the caller's certificate).
INBOUND_MAX_REQUEST_HEADERS_KB = 60
INBOUND_MAX_HEADERS_COUNT = 100

# -- every Envoy (bootstrap runtime) --------------------------------------------------------------
# HTTP/2 rapid reset (CVE-2023-44487): a connection is closed once half of this many streams
# were reset by the client less than PREMATURE_RESET_MIN_LIFETIME_S after they were opened
# (or, past this many streams, once more than half of them were). Envoy's values, pinned.
PREMATURE_RESET_TOTAL_STREAM_COUNT = 500
PREMATURE_RESET_MIN_LIFETIME_S = 1

BUFFER_FILTER = "envoy.filters.http.buffer"


def overload_manager(max_connections: int) -> dict[str, object]:
    """The bootstrap's overload manager: at most `max_connections` downstream connections."""
    return {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                    "DownstreamConnectionsConfig",
                    "max_active_downstream_connections": max_connections,
                },
            }
        ]
    }


def runtime() -> dict[str, int]:
    """The runtime keys every Envoy starts with (a static layer of its bootstrap)."""
    return {
        "overload.premature_reset_total_stream_count": PREMATURE_RESET_TOTAL_STREAM_COUNT,
        "overload.premature_reset_min_stream_lifetime_seconds": PREMATURE_RESET_MIN_LIFETIME_S,
    }


def body_filter() -> hcm_pb2.HttpFilter:
    """413 past MAX_REQUEST_BODY_BYTES. Put last before the router, so requests other filters
    refuse (tokens, roles) are refused before their body is read."""
    config = buffer_pb2.Buffer(max_request_bytes={"value": MAX_REQUEST_BODY_BYTES})
    return hcm_pb2.HttpFilter(name=BUFFER_FILTER, typed_config=pack(config))


def no_buffer() -> buffer_pb2.BufferPerRoute:
    """For a stream's route: its body flows (a stream's body has no end to wait for)."""
    return buffer_pb2.BufferPerRoute(disabled=True)


def edge(manager: HCM) -> None:
    """The ingress's connection manager: every limit above."""
    manager.max_request_headers_kb.value = MAX_REQUEST_HEADERS_KB
    options = manager.common_http_protocol_options
    options.max_headers_count.value = MAX_HEADERS_COUNT
    options.idle_timeout.CopyFrom(duration(CONNECTION_IDLE_TIMEOUT))
    manager.request_headers_timeout.CopyFrom(duration(REQUEST_HEADERS_TIMEOUT))
    manager.stream_idle_timeout.CopyFrom(duration(STREAM_IDLE_TIMEOUT))
    manager.http2_protocol_options.CopyFrom(
        protocol_pb2.Http2ProtocolOptions(
            max_concurrent_streams={"value": H2_MAX_CONCURRENT_STREAMS},
            initial_stream_window_size={"value": H2_INITIAL_STREAM_WINDOW_BYTES},
            initial_connection_window_size={"value": H2_INITIAL_CONNECTION_WINDOW_BYTES},
            max_outbound_frames={"value": H2_MAX_OUTBOUND_FRAMES},
            max_outbound_control_frames={"value": H2_MAX_OUTBOUND_CONTROL_FRAMES},
            max_consecutive_inbound_frames_with_empty_payload={"value": H2_MAX_CONSECUTIVE_EMPTY_FRAMES},
        )
    )


def inbound(manager: HCM) -> None:
    """A side-car's inbound connection manager: header limits and the headers timeout. No
    connection idle timeout shorter than Envoy's (callers pool their connections to it, and a
    server closing pooled connections races with requests sent on them), no stream idle
    timeout (calls between services may stream for as long as their route allows)."""
    manager.max_request_headers_kb.value = INBOUND_MAX_REQUEST_HEADERS_KB
    manager.common_http_protocol_options.max_headers_count.value = INBOUND_MAX_HEADERS_COUNT
    manager.request_headers_timeout.CopyFrom(duration(REQUEST_HEADERS_TIMEOUT))


def route_idle_timeout(route_timeout: timedelta) -> timedelta | None:
    """A route whose timeout is longer than the stream idle timeout gets an idle timeout of its
    own, so a slow app is cut by its route's timeout (504), not by a 408 that reads like the
    client's fault; None when the connection manager's is enough."""
    return route_timeout if route_timeout > STREAM_IDLE_TIMEOUT else None
