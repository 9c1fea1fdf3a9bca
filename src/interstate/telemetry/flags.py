"""Envoy's response flags in words: why a request failed in the mesh (the 503 UH/UF/UO/UT
debugging that mesh users ask for), and gRPC's status codes, since a failed gRPC call is an
HTTP 200 whose `grpc-status` says what went wrong. Used by `interstate status` and the
access-log readers."""

from __future__ import annotations

FLAGS = {
    "UH": "no healthy upstream: every replica is ejected or none is ready",
    "UF": "upstream connection failure: could not connect to the replica",
    "UO": "upstream overflow: the connection-pool limit was reached (circuit breaker)",
    "NR": "no route: nothing is configured for this host or path",
    "URX": "retry limit reached: every attempt failed",
    "UT": "timed out by the caller's side-car (or the ingress): the call's timeout passed (TrafficPolicy timeout, 15s by default)",
    "UC": "upstream connection terminated",
    "UR": "upstream remote reset: the replica reset the stream",
    "LR": "local reset: Envoy reset the stream",
    "LH": "local service failed its health check",
    "DC": "downstream connection terminated: the caller went away",
    "FI": "fault injected (abort): a rehearsal is on",
    "DI": "fault injected (delay): a rehearsal is on",
    "RL": "rate limited",
    "UAEX": "denied by external authorization",
    "RLSE": "rate limit service error",
    "IH": "invalid header value rejected",
    "SI": "stream idle timeout: nothing moved on the stream for its idle timeout (TrafficPolicy idleTimeout)",
    "DPE": "downstream protocol error",
    "UPE": "upstream protocol error",
    "UMSDR": "upstream stream duration limit reached",
    "OM": "overload manager shed the request",
    "DF": "DNS resolution failed",
    "NC": "no cluster: the service is unknown to this proxy",
}


UH_EJECTED = "no healthy upstream: the caller had ejected replicas (circuit open)"
UH_NOT_READY = "no healthy upstream: no replica was ready yet (none ejected; starting, or none runs)"


def explain(flags: str, ejecting: bool | None = None) -> str:
    """'UH' -> words; several flags ('UF,URX') are explained in order; '-' means none.
    `ejecting`: whether the caller had a replica ejected at the time, when known: it tells a
    circuit open from a service that is not ready yet (both are UH to Envoy)."""
    if not flags or flags == "-":
        return "no Envoy flag (the app answered this status itself)"
    uh = FLAGS["UH"] if ejecting is None else UH_EJECTED if ejecting else UH_NOT_READY
    return "; ".join(uh if f == "UH" else FLAGS.get(f, f"Envoy flag {f}") for f in flags.split(","))


# gRPC status codes by number (grpc/doc/statuscodes.md).
GRPC_CODES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
# The codes that say the service failed (as an HTTP 5xx would), not that the caller asked for
# something wrong (as a 4xx would): what status counts as failed calls.
GRPC_FAILURES = frozenset({2, 4, 8, 12, 13, 14, 15})


def grpc_code(value: object) -> int | None:
    """The gRPC status of an access-log entry's `grpc` field; None for a call that is no gRPC."""
    try:
        code = int(str(value))
    except ValueError:
        return None
    return code if code in GRPC_CODES else None
