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
  supervisor's audit trail), the last ACKed version stays in force, and the rejected version
  is not sent again (the next new version will be);
- on a snapshot change, types are sent in make-before-break order: CDS, EDS, LDS, RDS.
Responses are pre-serialized bytes from the snapshot; only the nonce is added per stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from interstate.errors import TemporaryError
from interstate.xds import resources as rt
from interstate.xds.cache import SnapshotCache
from interstate.xds.snapshot import Snapshot, response

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

Authenticator = Callable[[grpc.aio.ServicerContext, str], Awaitable[str | None]]
"""(a stream's context, the node ID it claims) -> None to serve it, or why it is refused."""


@dataclass
class Nack:
    version: str
    message: str
    at: float


@dataclass(frozen=True)
class TypeSync:
    """What one node has of one resource type: the version sent, the version ACKed, and the
    NACK in force (None once Envoy accepted a later version)."""

    sent: str
    acked: str
    nack: Nack | None


@dataclass(frozen=True)
class NodeSync:
    """One node's xDS state: its open streams and, per short type name (CDS, EDS, ...), its sync."""

    streams: int
    types: dict[str, TypeSync]


@dataclass
class TypeState:
    subscribed: bool = False
    names: frozenset[str] | None = None  # None = wildcard
    nonce: str = ""
    sent: tuple[str, frozenset[str] | None] | None = None  # (version, names) last sent
    acked: str = ""
    nack: Nack | None = None
    answered: bool = False  # the response with `nonce` has been ACKed or NACKed


@dataclass
class StreamState:
    node_id: str = ""
    peer: str = ""
    opened: float = field(default_factory=time.time)
    types: dict[str, TypeState] = field(default_factory=lambda: {t: TypeState() for t in rt.ORDER})
    counter: int = 0

    def next_nonce(self) -> str:
        self.counter += 1
        return str(self.counter)


class AdsServer:
    def __init__(
        self,
        cache: SnapshotCache,
        registry: CollectorRegistry | None = None,
        on_nack: Callable[[str, str, str, str], None] | None = None,
    ) -> None:
        self.cache = cache
        self.on_nack = on_nack  # called with (node, type e.g. "CDS", rejected version, Envoy's message)
        self.registry = registry or CollectorRegistry()
        self._streams: dict[int, StreamState] = {}
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
        self.authenticate: Authenticator | None = None
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
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
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
        streams: dict[str, int] = {}
        types: dict[str, dict[str, TypeSync]] = {}
        for state in self._streams.values():
            streams[state.node_id] = streams.get(state.node_id, 0) + 1
            of_node = types.setdefault(state.node_id, {})
            for type_url, ts in state.types.items():
                if ts.subscribed:
                    of_node[rt.SHORT[type_url]] = TypeSync(ts.sent[0] if ts.sent else "", ts.acked, ts.nack)
        return {node: NodeSync(n, types[node]) for node, n in streams.items()}

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
                if ts.nack is not None and ts.nack.version == want:
                    nacked.setdefault(stream.node_id, []).append(f"{rt.SHORT[type_url]}: {ts.nack.message}")
                elif ts.acked != want:
                    pending.add(stream.node_id)
        return pending, nacked

    async def wait_settled(self, node_ids: list[str], timeout: float) -> dict[str, list[str]]:
        """Wait (bounded) until every connected node answered its current snapshot; return the
        NACKs, if any, by node."""
        deadline = time.monotonic() + timeout
        while True:
            pending, nacked = self.rejections(node_ids)
            if not pending or time.monotonic() >= deadline:
                return nacked
            await asyncio.sleep(0.01)

    async def wait_acked(self, node_ids: list[str], type_url: str, timeout: float) -> bool:
        """Wait until every connected node in `node_ids` ACKed its current `type_url` version."""
        deadline = time.monotonic() + timeout
        while True:
            connected = {s.node_id for s in self._streams.values()}
            if all(self.acked(n, type_url) for n in node_ids if n in connected):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

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
            log.error("refused ADS stream from %s: %s", peer, refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    # ---- the stream ------------------------------------------------------------------------
    async def _stream(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        state = StreamState(peer=context.peer())
        self._streams[id(state)] = state
        self.connected.inc()
        inbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await inbox.put(request)
            finally:
                await inbox.put(None)

        reader = asyncio.create_task(read())
        try:
            await self._serve(state, inbox, context)
        finally:
            reader.cancel()
            self._streams.pop(id(state), None)
            self.connected.dec()
            log.info("ADS stream closed: %s (%s)", state.node_id or "?", state.peer)

    async def _serve(
        self,
        state: StreamState,
        inbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None],
        context: grpc.aio.ServicerContext,
    ) -> None:
        changed: asyncio.Event | None = None
        get_request: asyncio.Task[discovery_pb2.DiscoveryRequest | None] | None = None
        try:
            while True:
                if get_request is None:
                    get_request = asyncio.create_task(inbox.get())
                waiters: set[asyncio.Future[Any]] = {get_request}
                wait_change = None
                if changed is not None:
                    wait_change = asyncio.create_task(changed.wait())
                    waiters.add(wait_change)
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if wait_change is not None and wait_change not in done:
                    wait_change.cancel()
                if get_request in done:
                    request = get_request.result()
                    get_request = None
                    if request is None:
                        return
                    if not state.node_id:
                        claimed = request.node.id
                        if not claimed:
                            await context.abort(
                                grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id"
                            )
                        await self._authenticate(context, state.peer, claimed)
                        state.node_id = claimed  # only now does the stream count as this node's
                        log.info("ADS stream opened: %s (%s)", state.node_id, state.peer)
                    if changed is None:
                        changed = self.cache.watch(state.node_id)
                    await self._on_request(state, request, context)
                if changed is not None and changed.is_set():
                    changed = self.cache.watch(state.node_id)
                    await self._push_changes(state, context)
        finally:
            if get_request is not None:
                get_request.cancel()

    async def _on_request(
        self, state: StreamState, request: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext
    ) -> None:
        type_url = request.type_url
        if type_url not in state.types:
            log.warning("%s asked for unsupported type %s", state.node_id, type_url)
            return
        ts = state.types[type_url]
        short = rt.SHORT[type_url]
        names = None if type_url in rt.WILDCARD else frozenset(request.resource_names)
        if request.response_nonce:
            if request.response_nonce != ts.nonce:
                self.stale.labels(short).inc()
                log.debug("%s %s: stale nonce %s ignored", state.node_id, short, request.response_nonce)
                return
            if ts.answered:
                # Envoy answers each response once; another request for the same nonce means its
                # watches changed (e.g. an updated EDS cluster is warming) and it needs the
                # resources again. Not a new ACK or NACK, so not counted as one.
                snap = self.cache.get(state.node_id)
                rejected = ts.nack is not None and snap is not None and ts.nack.version == snap.version(type_url)
                if rejected and names == ts.names:
                    return  # never resend a rejected version
                log.debug("%s %s: re-requested at nonce %s", state.node_id, short, ts.nonce)
            else:
                ts.answered = True
                if request.HasField("error_detail"):
                    version = ts.sent[0] if ts.sent else ""
                    ts.nack = Nack(version, request.error_detail.message, time.time())
                    self.nacks.labels(short).inc()
                    log.error(
                        "%s rejected %s version %s (keeps %s): %s",
                        state.node_id,
                        short,
                        version,
                        request.version_info or "none",
                        request.error_detail.message,
                    )
                    if self.on_nack is not None:
                        try:
                            self.on_nack(state.node_id, short, version, request.error_detail.message)
                        except Exception:  # a failing listener must not end the stream
                            log.exception("NACK callback failed")
                    ts.names = names if names is not None else ts.names
                    return
                ts.acked = request.version_info
                ts.nack = None  # a later version was accepted; the NACK stays in the counter
                self.acks.labels(short).inc()
                if names == ts.names:
                    # A plain ACK. Send only if the snapshot moved on while this was in flight.
                    await self._send_if_new(state, type_url, context)
                    return
        # First request, reconnect, changed subscription or re-request: answer with current state.
        ts.subscribed = True
        ts.names = names
        await self._send(state, type_url, context)

    async def _push_changes(self, state: StreamState, context: grpc.aio.ServicerContext) -> None:
        for type_url in rt.ORDER:
            if state.types[type_url].subscribed:
                await self._send_if_new(state, type_url, context)

    async def _send_if_new(self, state: StreamState, type_url: str, context: grpc.aio.ServicerContext) -> None:
        ts = state.types[type_url]
        snap = self.cache.get(state.node_id)
        if snap is None or ts.sent == (snap.version(type_url), ts.names):
            return
        if (
            ts.nack is not None
            and ts.nack.version == snap.version(type_url)
            and ts.sent
            and ts.sent[0] == ts.nack.version
        ):
            return  # never resend a rejected version
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
        await context.write(response(typeset.body(ts.names), ts.nonce))
        self.pushes.labels(rt.SHORT[type_url]).inc()
        log.debug("%s <- %s version %s nonce %s", state.node_id, rt.SHORT[type_url], typeset.version, ts.nonce)
