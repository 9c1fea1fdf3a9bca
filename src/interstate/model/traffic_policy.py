"""The `TrafficPolicy` resource, in the chapter's shape: how callers treat one destination.

    spec.destination.service                    the service the policy applies to
    spec.outlierDetection                       circuit breaking (see "Fast fail" below)
      .consecutiveErrors                        eject a replica after this many 5xx in a row
                                                (connect failures and resets count too)
      .consecutiveGatewayErrors                 ... or this many 502/503/504 in a row (optional)
      .baseEjectionTime                         for this long, times the number of ejections
      .interval                                 how often ejection is evaluated (default 1s)
      .maxEjectionPercent                       how many replicas may be ejected (default 100)
    spec.connectionPool                         limits per caller side-car; over them: 503 (UO)
      .maxConnections .maxPendingRequests .maxRequests .maxRequestsPerConnection
    spec.retries                                (defaults: 2 attempts, 25-250 ms back-off)
      .attempts .perTryTimeout .retryOn .backoff{baseInterval,maxInterval}
      .budget{percent,minConcurrency}           retries in flight <= percent of active requests
    spec.timeout                                whole request, retries included (default 15s);
                                                the caller's side-car keeps it, the callee's adds none
    spec.idleTimeout                            a stream (gRPC, WebSocket, server-sent events) has no
                                                total timeout: it is cut when nothing moves this long
                                                (default 5m)
    spec.loadBalancer                           ROUND_ROBIN (default), LEAST_REQUEST, RING_HASH
      .hashOn{header | cookie{name, ttl}}       RING_HASH: sticky by header or cookie
    spec.fault                                  rehearsals: abort{percent,status}, delay{percent,fixedDelay},
      .at                                       CALLERS (default: the callers' side-cars fail the calls,
                                                as Istio's fault injection) or SERVICE (the service's
                                                own side-cars do: callers see real failures, so their
                                                outlier detection trips, as when the service breaks)

Fast fail: with outlierDetection, once every replica is ejected callers get an immediate 503
(flag UH, no upstream attempt) until `baseEjectionTime` has passed; Envoy's panic threshold is 0
and up to `maxEjectionPercent` (default 100) of the replicas may be ejected.

Safe retries: only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) are retried on the
`retryOn` conditions; every other method only when the request cannot have reached the app
(connect failure, refused stream, reset before the request was sent), so a POST is never
replayed. Retries go to another replica when there is one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field, model_validator

from interstate.model.base import Claim, Duration, Name, Percent, Reference, Resource, Strict


def _positive(value: timedelta) -> timedelta:
    # Envoy NACKs zero intervals, ejection times and timeouts; say so here, naming the field.
    if value <= timedelta(0):
        raise ValueError("must be more than 0s, e.g. 30s")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
Count = Annotated[int, Field(ge=1, le=1_000_000, strict=True)]

# `replica-unreachable` and `replica-reset` are interstate's own: the callee's side-car could not
# reach its app (connect failure, overflow: the app never saw the request, so any method may be
# retried), or the app dropped the connection before answering (idempotent methods only).
# The default does not retry an app's own 503 (gateway-error would): an app that says "unavailable"
# (its dependency's circuit is open) is answered at once, not retried with back-off.
# gRPC status codes (a gRPC call's answer is HTTP 200 with `grpc-status`): applied to gRPC calls
# only, as gRPC has no idempotent methods to tell safe retries by. None is retried by default.
GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
RETRY_ON = (
    "replica-unreachable",
    "replica-reset",
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "envoy-ratelimited",
    *GRPC_RETRY_ON,
)
SAFE_RETRY_ON = ("connect-failure", "refused-stream", "reset-before-request", "replica-unreachable")
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "reset", "replica-unreachable", "replica-reset")
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")


class Destination(Strict):
    service: Name


class OutlierDetection(Strict):
    consecutive_errors: int = Field(default=5, ge=1, le=1000, strict=True)
    consecutive_gateway_errors: int | None = Field(default=None, ge=1, le=1000, strict=True)
    base_ejection_time: PositiveDuration = timedelta(seconds=30)
    interval: PositiveDuration = timedelta(seconds=1)
    max_ejection_percent: Percent = 100


class ConnectionPool(Strict):
    max_connections: Count | None = None
    max_pending_requests: Count | None = None
    max_requests: Count | None = None  # concurrent requests to the service
    max_requests_per_connection: Count | None = None


class Backoff(Strict):
    base_interval: PositiveDuration = timedelta(milliseconds=25)
    max_interval: PositiveDuration = timedelta(milliseconds=250)

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.max_interval < self.base_interval:
            raise ValueError("maxInterval: must be at least baseInterval")
        return self


class RetryBudget(Strict):
    percent: Annotated[int, Field(ge=1, le=100, strict=True)]
    min_concurrency: int = Field(default=3, ge=0, le=1000, strict=True)


class Retries(Strict):
    attempts: int = Field(default=2, ge=0, le=10, strict=True)
    per_try_timeout: PositiveDuration | None = None
    retry_on: list[str] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))
    backoff: Backoff = Field(default_factory=Backoff)
    budget: RetryBudget | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Retries:
        unknown = [c for c in self.retry_on if c not in RETRY_ON]
        if unknown:
            raise ValueError(f"retryOn: {unknown[0]!r} is not a retry condition; use {', '.join(RETRY_ON)}")
        if self.attempts > 0 and self.per_try_timeout is None and self.budget is None:
            raise ValueError("perTryTimeout: retries need a bound; set perTryTimeout (e.g. 2s) or a retry budget")
        return self


class LbPolicy(StrEnum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RING_HASH = "RING_HASH"


class HashCookie(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    ttl: Duration = timedelta(hours=1)


class HashOn(Strict):
    header: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$")
    cookie: HashCookie | None = None

    @model_validator(mode="after")
    def _one(self) -> HashOn:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("give exactly one of header or cookie")
        return self


class LoadBalancer(Strict):
    policy: LbPolicy = LbPolicy.ROUND_ROBIN
    hash_on: HashOn | None = None

    @model_validator(mode="after")
    def _hash(self) -> LoadBalancer:
        if (self.policy is LbPolicy.RING_HASH) != (self.hash_on is not None):
            raise ValueError("hashOn: RING_HASH needs hashOn (header or cookie), and only RING_HASH uses it")
        return self


class Abort(Strict):
    percent: Percent
    status: int = Field(default=503, ge=200, le=599, strict=True)


class Delay(Strict):
    percent: Percent
    fixed_delay: PositiveDuration


class FaultAt(StrEnum):
    CALLERS = "CALLERS"
    SERVICE = "SERVICE"


class Fault(Strict):
    abort: Abort | None = None
    delay: Delay | None = None
    at: FaultAt = FaultAt.CALLERS

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.abort is None and self.delay is None:
            raise ValueError("give abort, delay or both")
        return self

    def describe(self) -> str:
        """In words, for status and the audit trail: "20% of calls get 503 (by the callers' side-cars)"."""
        parts = []
        if self.abort is not None:
            parts.append(f"{self.abort.percent}% of calls get {self.abort.status}")
        if self.delay is not None:
            parts.append(f"{self.delay.percent}% delayed {self.delay.fixed_delay.total_seconds():g}s")
        where = "by the service's own side-cars" if self.at is FaultAt.SERVICE else "by the callers' side-cars"
        return ", ".join(parts) + f" ({where})"


class TrafficPolicySpec(Strict):
    destination: Destination
    outlier_detection: OutlierDetection | None = None
    connection_pool: ConnectionPool | None = None
    retries: Retries | None = None
    timeout: PositiveDuration | None = None
    idle_timeout: PositiveDuration | None = None
    load_balancer: LoadBalancer | None = None
    fault: Fault | None = None


class TrafficPolicy(Resource):
    KIND: ClassVar[str] = "TrafficPolicy"

    spec: TrafficPolicySpec

    def references(self) -> Iterable[Reference]:
        yield Reference("spec.destination.service", "Workload", self.spec.destination.service)

    def claims(self) -> Iterable[Claim]:
        service = self.spec.destination.service
        yield Claim(
            "spec.destination.service",
            f"TrafficPolicy/{service}",
            f"the traffic policy of service {service!r}",
        )
