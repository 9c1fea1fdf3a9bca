"""What each ADS stream has of each resource type, and what a request on it means: pure.

`StreamState` holds, per type, the nonce and version last sent, the names subscribed, the
version ACKed and the NACK in force; `classify` says what a DiscoveryRequest is against that
state (the xDS state-of-the-world rules, see `xds.server`), and `node_syncs` sums the streams
into per-node `NodeSync`, what status, the dashboard and the core read. No gRPC, no I/O: the
server (`xds.server.AdsServer`) does the sending, this module the bookkeeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from interstate.xds import resources as rt


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

    def rejected(self, version: str) -> bool:
        """Envoy NACKed `version` of this type on this stream, and has accepted nothing since."""
        return self.nack is not None and self.nack.version == version


@dataclass
class StreamState:
    node_id: str = ""
    peer: str = ""
    opened: float = field(default_factory=time.time)
    types: dict[str, TypeState] = field(default_factory=lambda: {t: TypeState() for t in rt.ORDER})
    counter: int = 0
    serial: int = 0  # the stream's number on this server: its nonces are its own
    unknown_types: int = 0  # requests for types not served (logged once per stream)

    def next_nonce(self) -> str:
        self.counter += 1
        return f"{self.serial}.{self.counter}"


class Request(enum.Enum):
    """What a DiscoveryRequest of a served type is, against its stream's state."""

    SUBSCRIBE = "subscribe"  # no nonce: first request, or a reconnect; answer with the current state
    STALE = "stale"  # a nonce other than the last sent: ignored
    RE_REQUEST = "re-request"  # the last nonce again, already answered: Envoy's watches changed
    ACK = "ack"
    NACK = "nack"


def classify(ts: TypeState, nonce: str, has_error: bool) -> Request:
    if not nonce:
        return Request.SUBSCRIBE
    if nonce != ts.nonce:
        return Request.STALE
    if ts.answered:
        return Request.RE_REQUEST
    return Request.NACK if has_error else Request.ACK


def node_syncs(streams: Iterable[StreamState]) -> dict[str, NodeSync]:
    """Per node: open streams, and per type the version sent, ACKed, and the NACK in force."""
    counts: dict[str, int] = {}
    types: dict[str, dict[str, TypeSync]] = {}
    for state in streams:
        counts[state.node_id] = counts.get(state.node_id, 0) + 1
        of_node = types.setdefault(state.node_id, {})
        for type_url, ts in state.types.items():
            if ts.subscribed:
                of_node[rt.SHORT[type_url]] = TypeSync(ts.sent[0] if ts.sent else "", ts.acked, ts.nack)
    return {node: NodeSync(n, types[node]) for node, n in counts.items()}
