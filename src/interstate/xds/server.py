"""The ADS gRPC server (state of the world): streams each Envoy its node's snapshot.

Per stream and type it keeps the last nonce and version sent, the names subscribed and the
version ACKed. Rules (see DESIGN.md, "Protocol facts that bite"):
- a request without a nonce (first request, or after reconnect) gets the full current state;
- an ACK (nonce matches, no error) gets no response unless the subscription changed;
- a second request for a nonce already ACKed or NACKed is a re-request: Envoy's watches changed
  (an updated cluster or listener is warming and waits for its EDS/RDS) and it gets the current
  state again even when nothing changed (xDS "Resource warming"), unless that is a rejected version;
- a request with a stale nonce is ignored;
- a NACK (nonce matches, error_detail set) is logged, counted and passed to `on_nack` (the
  core records it in the audit trail), the last ACKed version stays in force, and the rejected
  version is not sent again (the next new version will be);
- on a snapshot change, types are sent in make-before-break order (`resources.ORDER`): SDS,
  CDS, EDS, LDS, RDS.
Responses are pre-serialized bytes from the snapshot; only the nonce is added per stream.

A client may be hostile (`XdsLimits`): what one stream holds is bounded (requests read ahead, names
per request and their length, the NACK text kept), streams are capped in all and per node
(RESOURCE_EXHAUSTED), a malformed request ends its stream (INVALID_ARGUMENT), an unknown type URL
gets nothing (as go-control-plane's cache: the stream goes on), every text a client sends is clipped
before it is logged, kept or audited, and gRPC itself caps message size, streams per connection,
handshake time and reaps dead connections with keepalive pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge

from interstate.errors import TemporaryError
from interstate.xds import resources as rt
from interstate.xds.cache import SnapshotCache
from interstate.xds.snapshot import Snapshot, response
from interstate.xds.sync import Nack, NodeSync, Request, StreamState, classify, node_syncs

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

Authenticator = Callable[[grpc.aio.ServicerContext, str], Awaitable[str | None]]
"""(a stream's context, the node ID it claims) -> None to serve it, or why it is refused."""


@dataclass(frozen=True)
class XdsLimits:
    """What one xDS client can make the server hold or do. An honest Envoy is far inside every
    bound (one stream, a few dozen names of a few dozen bytes, requests of some kilobytes); a
    stream over one is ended with a status that names the limit. Worst case per stream: `inbox`
    + 1 requests of `max_message_bytes`, and the names of the three named types (EDS, RDS, SDS),
    each at most one request's worth."""

    max_streams: int = 4096  # open streams in all, authenticated or not
    max_streams_per_node: int = 8  # open streams of one node (Envoy keeps one)
    max_names: int = 4096  # resource names in one request
    max_name_bytes: int = 1024  # one resource name, and a node ID
    max_message_bytes: int = 1 << 20  # one DiscoveryRequest (gRPC refuses a larger one)
    max_text_chars: int = 2048  # a NACK message or any other client text kept, logged or audited
    first_request_s: float = 10.0  # a new stream must send its node ID within this
    inbox: int = 4  # requests read ahead of the one being handled (then TCP pushes back)
    streams_per_connection: int = 16  # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS
    handshake_s: float = 10.0  # TLS and HTTP/2 set-up of a new connection
    keepalive_s: float = 30.0  # ping a connection after this long without a frame ...
    keepalive_timeout_s: float = 10.0  # ... and close it (and its streams) if the ping is not answered
    idle_connection_s: float = 300.0  # close a connection that has had no stream this long

    def grpc_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.streams_per_connection),
            ("grpc.server_handshake_timeout_ms", round(self.handshake_s * 1000)),
            ("grpc.keepalive_time_ms", round(self.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", round(self.keepalive_timeout_s * 1000)),
            ("grpc.http2.ping_timeout_ms", round(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),  # an idle ADS stream is still pinged
            ("grpc.max_connection_idle_ms", round(self.idle_connection_s * 1000)),
        ]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clip(text: str, limit: int) -> str:
    """Client text fit for a log line, a status or the audit trail: its first `limit` characters,
    saying how many more were cut, with control characters escaped (no forged log lines, no
    terminal escapes in `interstate status`)."""
    kept = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:limit])
    return kept if len(text) <= limit else f"{kept}… ({len(text) - limit} more characters)"


class _Gone(Exception):
    """A response could not be written: the call is over (the client cancelled or went away)."""


class _Malformed:
    """What the reader puts in the inbox when a request could not be read."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Progress:
    """Wakes whoever waits on the streams (`wait_acked`, `wait_settled`, `wait_connected`) when
    they move on: an ACK, a NACK, a stream that proved its node or closed. An event swapped at
    each notice (not an asyncio.Condition: notices come from code that holds no lock); waiters
    also look again every `RECHECK_S`, for what changes only in the snapshot cache."""

    RECHECK_S = 0.5

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        old, self._event = self._event, asyncio.Event()
        old.set()

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until `predicate()` holds; whether it did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), min(remaining, self.RECHECK_S))
        return True


class AdsServer:
    def __init__(
        self,
        cache: SnapshotCache,
        registry: CollectorRegistry | None = None,
        on_nack: Callable[[str, str, str, str], None] | None = None,
        limits: XdsLimits | None = None,
    ) -> None:
        self.cache = cache
        self.on_nack = on_nack  # called with (node, type e.g. "CDS", rejected version, Envoy's message)
        self.registry = registry or CollectorRegistry()
        self.limits = limits or XdsLimits()
        self._streams: dict[int, StreamState] = {}
        self._serials = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.pushes = Counter("interstate_xds_pushes", "xDS responses sent", ["type"], registry=self.registry)
        self.nacks = Counter(
            "interstate_xds_nacks", "xDS responses rejected by Envoy", ["type"], registry=self.registry
        )
        self.acks = Counter("interstate_xds_acks", "xDS responses accepted by Envoy", ["type"], registry=self.registry)
        self.stale = Counter(
            "interstate_xds_stale_requests", "requests with a stale nonce, ignored", ["type"], registry=self.registry
        )
        self.refused = Counter(
            "interstate_xds_refused_streams",
            "streams refused: the node ID was not the one their credential proves",
            registry=self.registry,
        )
        self.limited = Counter(
            "interstate_xds_limited_streams",
            "streams ended by a limit (XdsLimits): too many streams, names, a name too long, a malformed "
            "request, no node ID in time",
            ["limit"],
            registry=self.registry,
        )
        self.unknown = Counter(
            "interstate_xds_unknown_type_requests",
            "requests for a type URL not served, ignored",
            registry=self.registry,
        )
        self.authenticate: Authenticator | None = None
        self._progress = _Progress()
        self.connected = Gauge("interstate_xds_connected_streams", "open ADS streams", registry=self.registry)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        authenticate: Authenticator | None = None,
    ) -> int:
        """Listen on host:port (0 = any free port). With `credentials` (mutual TLS), each stream's
        node ID must equal the common name of the client certificate it connected with, unless
        `authenticate` decides instead (e.g. from a bearer token): what a proxy receives is
        decided by the identity it proved, not the one it claims."""
        self.authenticate = authenticate or (self._certificate_proves if credentials is not None else None)
        server = grpc.aio.server(options=self.limits.grpc_options())
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=lambda data: data,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        address = f"{host}:{port}"
        self.port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        await server.start()
        self._server = server
        log.info("ADS server listening on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # ---- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, NodeSync]:
        """Per node: open streams, and per type the version sent, ACKed, and the NACK in force
        (cleared once Envoy accepts a later version; the counter keeps the history)."""
        return node_syncs(self._streams.values())

    def connected_nodes(self) -> set[str]:
        """Nodes with an authenticated stream open."""
        return {s.node_id for s in self._streams.values() if s.node_id}

    def acked(self, node_id: str, type_url: str) -> bool:
        """True when some stream of `node_id` has ACKed the node's current version of `type_url`,
        or does not subscribe to that type at all (nothing to wait for)."""
        snap = self.cache.get(node_id)
        if snap is None:
            return False
        want = snap.version(type_url)
        return any(
            s.node_id == node_id and (not s.types[type_url].subscribed or s.types[type_url].acked == want)
            for s in self._streams.values()
        )

    def kept_earlier(self, node_id: str) -> bool:
        """False when `node_id` rejected a type it had accepted no version of (as at start-up):
        then it has no earlier configuration of that type to keep."""
        return not any(
            s.node_id == node_id and t.nack is not None and not t.acked
            for s in self._streams.values()
            for t in s.types.values()
        )

    def rejections(self, node_ids: list[str]) -> tuple[set[str], dict[str, list[str]]]:
        """For the connected nodes among `node_ids`: which have not yet answered their current
        snapshot, and the NACK messages of those that rejected it ({node: [message]})."""
        pending: set[str] = set()
        nacked: dict[str, list[str]] = {}
        wanted = set(node_ids)
        for stream in self._streams.values():
            snap = self.cache.get(stream.node_id)
            if stream.node_id not in wanted or snap is None:
                continue
            for type_url, ts in stream.types.items():
                if not ts.subscribed:
                    continue
                want = snap.version(type_url)
                if ts.nack is not None and ts.rejected(want):
                    nacked.setdefault(stream.node_id, []).append(f"{rt.SHORT[type_url]}: {ts.nack.message}")
                elif ts.acked != want:
                    pending.add(stream.node_id)
        return pending, nacked

    async def wait_settled(self, node_ids: list[str], timeout: float) -> dict[str, list[str]]:
        """Wait (bounded) until every connected node answered its current snapshot; return the
        NACKs, if any, by node."""
        await self._progress.until(lambda: not self.rejections(node_ids)[0], timeout)
        return self.rejections(node_ids)[1]

    async def wait_acked(self, node_ids: list[str], type_url: str, timeout: float) -> bool:
        """Wait until every connected node in `node_ids` ACKed its current `type_url` version."""

        def acked() -> bool:
            connected = {s.node_id for s in self._streams.values()}
            return all(self.acked(n, type_url) for n in node_ids if n in connected)

        return await self._progress.until(acked, timeout)

    async def wait_connected(self, node_ids: list[str], timeout: float) -> bool:
        """Wait (bounded) until every node in `node_ids` has a stream open that proved it."""
        return await self._progress.until(lambda: set(node_ids) <= self.connected_nodes(), timeout)

    @staticmethod
    async def _certificate_proves(context: grpc.aio.ServicerContext, node_id: str) -> str | None:
        names = context.auth_context().get("x509_common_name", [])
        proven = names[0].decode() if len(names) == 1 else ""
        if proven == node_id:
            return None
        return f"node {node_id!r} does not match the client certificate ({proven or 'none'})"

    async def _authenticate(self, context: grpc.aio.ServicerContext, peer: str, node_id: str) -> None:
        """Abort the stream unless its credential proves `node_id`: PERMISSION_DENIED when it
        does not, UNAVAILABLE when it cannot be checked now (the hook raised TemporaryError)."""
        if self.authenticate is None:
            return
        try:
            refusal = await self.authenticate(context, node_id)
        except TemporaryError as exc:
            self.refused.inc()
            log.error("could not authenticate the ADS stream from %s: %s", peer, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot authenticate now: {exc}")
        if refusal is not None:
            self.refused.inc()
            refusal = clip(refusal, self.limits.max_text_chars)
            log.error("refused ADS stream from %s: %s", peer, refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    async def _limit(self, context: grpc.aio.ServicerContext, limit: str, code: grpc.StatusCode, why: str) -> None:
        """End the stream because a client went past `limit` (counted, logged, said in the status)."""
        self.limited.labels(limit).inc()
        log.warning("ended ADS stream from %s: %s", context.peer(), why)
        await context.abort(code, why)

    # ---- the stream ------------------------------------------------------------------------
    async def _stream(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        if len(self._streams) >= self.limits.max_streams:
            await self._limit(
                context,
                "streams",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the control plane serves at most {self.limits.max_streams} xDS streams at once; try again later",
            )
        state = StreamState(peer=context.peer(), serial=next(self._serials))
        self._streams[id(state)] = state
        self.connected.inc()
        # Bounded: while a request is handled (or a response waits for a client that does not
        # read), the reader stops reading and HTTP/2 flow control holds the client back.
        inbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | _Malformed | None] = asyncio.Queue(self.limits.inbox)

        async def read() -> None:
            end: _Malformed | None = None
            try:
                async for request in requests:
                    await inbox.put(request)
            except DecodeError as exc:  # not a DiscoveryRequest
                end = _Malformed(exc)
            except Exception as exc:  # the call ended under the iterator: the stream is over
                log.debug("ADS stream from %s: reading ended with %r", state.peer, exc)
            await inbox.put(end)  # (not when cancelled: then the stream is over already)

        reader = asyncio.create_task(read())
        try:
            await self._serve(state, inbox, context)
        except _Gone as exc:  # the client went away while a response was being written
            log.debug("ADS stream of %s ended during a write: %s", state.node_id or "?", exc.__cause__)
        finally:
            reader.cancel()
            self._streams.pop(id(state), None)
            self.connected.dec()
            self._progress.notify()
            log.info("ADS stream closed: %s (%s)", state.node_id or "?", state.peer)

    async def _first_request(
        self,
        state: StreamState,
        request: discovery_pb2.DiscoveryRequest,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Authenticate the node the stream's first request claims, within the per-node cap."""
        claimed = request.node.id
        if not claimed:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
        if len(claimed.encode()) > self.limits.max_name_bytes:
            await self._limit(
                context,
                "name_bytes",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node.id is {len(claimed.encode())} bytes long; at most {self.limits.max_name_bytes} are accepted",
            )
        await self._authenticate(context, state.peer, claimed)
        open_streams = sum(1 for s in self._streams.values() if s.node_id == claimed)
        if open_streams >= self.limits.max_streams_per_node:
            await self._limit(
                context,
                "streams_per_node",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node {claimed!r} has {open_streams} xDS streams open already; at most "
                f"{self.limits.max_streams_per_node} are served per node",
            )
        state.node_id = claimed  # only now does the stream count as this node's
        self._progress.notify()
        log.info("ADS stream opened: %s (%s)", state.node_id, state.peer)

    async def _serve(
        self,
        state: StreamState,
        inbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | _Malformed | None],
        context: grpc.aio.ServicerContext,
    ) -> None:
        changed: asyncio.Event | None = None
        get_request: asyncio.Task[discovery_pb2.DiscoveryRequest | _Malformed | None] | None = None
        wait_change: asyncio.Task[Any] | None = None
        try:
            while True:
                if get_request is None:
                    get_request = asyncio.create_task(inbox.get())
                waiters: set[asyncio.Future[Any]] = {get_request}
                wait_change = None
                if changed is not None:
                    wait_change = asyncio.create_task(changed.wait())
                    waiters.add(wait_change)
                timeout = None if state.node_id else self.limits.first_request_s
                done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if wait_change is not None and wait_change not in done:
                    wait_change.cancel()
                if not done:
                    await self._limit(
                        context,
                        "first_request",
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no DiscoveryRequest with node.id within {self.limits.first_request_s:g}s",
                    )
                if get_request in done:
                    request = get_request.result()
                    get_request = None
                    if request is None:
                        return
                    if isinstance(request, _Malformed):
                        await self._limit(
                            context,
                            "malformed",
                            grpc.StatusCode.INVALID_ARGUMENT,
                            clip(f"not a DiscoveryRequest: {request.error}", self.limits.max_text_chars),
                        )
                        return  # not reached: abort raises
                    if not state.node_id:
                        await self._first_request(state, request, context)
                    if changed is None:
                        changed = self.cache.watch(state.node_id)
                    await self._on_request(state, request, context)
                if changed is not None and changed.is_set():
                    changed = self.cache.watch(state.node_id)
                    await self._push_changes(state, context)
        finally:
            # also when the stream is cancelled mid-wait: a waiter left behind would live until
            # the node's next snapshot change (one per dropped stream)
            for task in (get_request, wait_change):
                if task is not None:
                    task.cancel()

    async def _check_names(self, request: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext) -> None:
        names = request.resource_names
        if len(names) > self.limits.max_names:
            await self._limit(
                context,
                "names",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a request names {len(names)} resources; at most {self.limits.max_names} are served per request",
            )
        longest = max((len(n.encode()) for n in names), default=0)
        if longest > self.limits.max_name_bytes:
            await self._limit(
                context,
                "name_bytes",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a resource name is {longest} bytes long; at most {self.limits.max_name_bytes} are accepted",
            )

    async def _on_request(
        self, state: StreamState, request: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext
    ) -> None:
        type_url = request.type_url
        if not type_url:
            await self._limit(
                context,
                "type_url",
                grpc.StatusCode.INVALID_ARGUMENT,
                "a request on an ADS stream must name its type_url",
            )
        await self._check_names(request, context)
        if type_url not in state.types:
            # Like go-control-plane's cache: no response (Envoy's watch for a type nobody serves
            # times out on its own), and the stream goes on serving the types it knows.
            self.unknown.inc()
            state.unknown_types += 1
            if state.unknown_types == 1:
                log.warning("%s asked for unsupported type %s", state.node_id, clip(type_url, 200))
            return
        ts = state.types[type_url]
        names = None if type_url in rt.WILDCARD else frozenset(request.resource_names)
        kind = classify(ts, request.response_nonce, request.HasField("error_detail"))
        if kind is Request.STALE:
            self.stale.labels(rt.SHORT[type_url]).inc()
            log.debug(
                "%s %s: stale nonce %s ignored", state.node_id, rt.SHORT[type_url], clip(request.response_nonce, 64)
            )
            return
        if kind is Request.NACK:
            self._nack(state, type_url, request, names)
            return
        if kind is Request.ACK:
            self._ack(state, type_url)
            if names == ts.names:  # a plain ACK: send only if the snapshot moved on meanwhile
                await self._send_if_new(state, type_url, context)
                return
        elif kind is Request.RE_REQUEST:
            # Envoy answers each response once; another request for the same nonce means its
            # watches changed (e.g. an updated EDS cluster is warming) and it needs the resources
            # again. Not a new ACK or NACK, so not counted as one.
            snap = self.cache.get(state.node_id)
            if snap is not None and ts.rejected(snap.version(type_url)) and names == ts.names:
                return  # never resend a rejected version
            log.debug("%s %s: re-requested at nonce %s", state.node_id, rt.SHORT[type_url], ts.nonce)
        # First request, reconnect, changed subscription or re-request: answer with current state.
        ts.subscribed = True
        ts.names = names
        await self._send(state, type_url, context)

    def _ack(self, state: StreamState, type_url: str) -> None:
        ts = state.types[type_url]
        ts.answered = True
        ts.acked = ts.sent[0] if ts.sent else ""  # what this nonce carried, not what the client says it holds
        ts.nack = None  # a later version was accepted; the NACK stays in the counter
        self.acks.labels(rt.SHORT[type_url]).inc()
        self._progress.notify()

    def _nack(
        self, state: StreamState, type_url: str, request: discovery_pb2.DiscoveryRequest, names: frozenset[str] | None
    ) -> None:
        """Envoy rejected the version last sent: keep the NACK in force, count it, and report it
        (log and `on_nack`) unless it is the same rejection of the same version again."""
        ts, short = state.types[type_url], rt.SHORT[type_url]
        ts.answered = True
        version = ts.sent[0] if ts.sent else ""
        message = clip(request.error_detail.message, self.limits.max_text_chars)
        again = ts.nack is not None and (ts.nack.version, ts.nack.message) == (version, message)
        ts.nack = Nack(version, message, time.time())
        self.nacks.labels(short).inc()
        ts.names = names if names is not None else ts.names
        self._progress.notify()
        if again:
            log.debug("%s rejected %s version %s again", state.node_id, short, version)
            return
        kept = clip(request.version_info, 64) or "none"
        log.error("%s rejected %s version %s (keeps %s): %s", state.node_id, short, version, kept, message)
        if self.on_nack is not None:
            try:
                self.on_nack(state.node_id, short, version, message)
            except Exception:  # a failing listener must not end the stream
                log.exception("NACK callback failed")

    async def _push_changes(self, state: StreamState, context: grpc.aio.ServicerContext) -> None:
        for type_url in rt.ORDER:
            if state.types[type_url].subscribed:
                await self._send_if_new(state, type_url, context)

    async def _send_if_new(self, state: StreamState, type_url: str, context: grpc.aio.ServicerContext) -> None:
        ts = state.types[type_url]
        snap = self.cache.get(state.node_id)
        if snap is None or ts.sent == (snap.version(type_url), ts.names):
            return
        if ts.rejected(snap.version(type_url)) and ts.sent and ts.sent[0] == snap.version(type_url):
            return  # never resend a rejected version (to these or other names)
        await self._send(state, type_url, context, snap)

    async def _send(
        self, state: StreamState, type_url: str, context: grpc.aio.ServicerContext, snap: Snapshot | None = None
    ) -> None:
        snap = snap or self.cache.get(state.node_id)
        if snap is None:
            return  # nothing known for this node yet; sent when its snapshot is set
        ts = state.types[type_url]
        typeset = snap.types[type_url]
        ts.nonce = state.next_nonce()
        ts.answered = False
        ts.sent = (typeset.version, ts.names)
        try:
            await context.write(response(typeset.body(ts.names), ts.nonce))
        except Exception as exc:  # grpc raises only when the call has ended
            raise _Gone from exc
        self.pushes.labels(rt.SHORT[type_url]).inc()
        log.debug("%s <- %s version %s nonce %s", state.node_id, rt.SHORT[type_url], typeset.version, ts.nonce)
