"""The mesh-wide `Mesh` resource: trust domain, the policy header and its default value."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from interstate.model.base import HopProtocol, Mtls, MtlsMode, Resource, Strict

_HEADER_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_POLICY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# Envoy refuses to add these, or they mean something to HTTP itself.
_FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "content-length",
        "expect",
        "trailer",
    }
)


def _check_header(value: str) -> str:
    if value in _FORBIDDEN_HEADERS or value.startswith("x-envoy-"):
        raise ValueError(f"{value!r} cannot carry the policy; choose your own header name, e.g. 'x-policy-ctx'")
    if not _HEADER_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid header name; use lower-case letters, digits and '-' "
            "(no underscores), e.g. 'x-policy-ctx'"
        )
    return value


def check_policy_id(value: str) -> str:
    if not _POLICY_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid policy ID; use letters, digits, '.', '_' or '-', "
            "at most 64 characters, e.g. 'FEC-F101'"
        )
    return value


# Always allowed across the mesh boundary: HTTP's own request headers (RFC 9110/9111) and what
# Envoy itself sets; `authorization` and `cookie` only when listed (or used by the mesh itself).
HTTP_HEADERS = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "connection",
        "content-encoding",
        "content-language",
        "content-length",
        "content-type",
        "date",
        "expect",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "keep-alive",
        "pragma",
        "range",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-forwarded-proto",
        "x-request-id",
        # the protocols services speak (issue 12): WebSocket's handshake (RFC 6455), gRPC's
        # request headers, server-sent events' reconnection point
        "origin",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "grpc-accept-encoding",
        "grpc-encoding",
        "grpc-timeout",
        "last-event-id",
    }
)
# Never allowed in from outside, whatever the list says: they steer Envoy or claim an identity.
INTERNAL_PREFIXES = ("x-envoy-",)
INTERNAL_HEADERS = frozenset({"x-forwarded-client-cert"})


def _check_allowed(value: str) -> str:
    """An allow-list entry: a header name, a prefix ending in `*` (`x-results-*`), or `*` (all)."""
    if value == "*":
        return value
    name = value[:-1] if value.endswith("*") else value
    if not _HEADER_RE.match(name.rstrip("-") or "-"):
        raise ValueError(
            f"{value!r} is not a header name or prefix; use lower-case letters, digits and '-', "
            "optionally ending in '*' (e.g. 'x-correlation-id', 'x-results-*')"
        )
    if name in INTERNAL_HEADERS or any(name.startswith(p) or p.startswith(name) for p in INTERNAL_PREFIXES):
        raise ValueError(f"{value!r} would let Envoy-internal headers in from outside; they are always removed")
    return value


HeaderName = Annotated[str, AfterValidator(_check_header)]
AllowedHeader = Annotated[str, AfterValidator(_check_allowed)]
PolicyId = Annotated[str, AfterValidator(check_policy_id)]


class UnknownPolicy(StrEnum):
    REPLACE = "REPLACE"  # the ingress replaces it with the default policy (and counts it)
    REJECT = "REJECT"  # the ingress answers 400 (and counts it)


class OutboundMode(StrEnum):
    REGISTRY_ONLY = "REGISTRY_ONLY"  # an app may call only the services in its spec.calls (404 otherwise)
    ALLOW_ANY = "ALLOW_ANY"  # undeclared hosts are passed through (and counted)


class OutboundTrafficPolicy(Strict):
    mode: OutboundMode = OutboundMode.REGISTRY_ONLY


class MeshSpec(Strict):
    trust_domain: str = Field(default="interstate.local", pattern=r"^[a-z0-9.-]+$")
    policy_header: HeaderName = "x-policy-ctx"
    default_policy: PolicyId | None = None
    # Policy IDs clients may send in; the default and the workloads' own are always known.
    known_policies: list[PolicyId] = Field(default_factory=list)
    unknown_policy: UnknownPolicy = UnknownPolicy.REPLACE
    mtls: Mtls = Mtls(mode=MtlsMode.STRICT)
    allowed_headers: list[AllowedHeader] = Field(default_factory=list)
    outbound_traffic_policy: OutboundTrafficPolicy = OutboundTrafficPolicy()
    hop_protocol: HopProtocol = HopProtocol.HTTP2


class Mesh(Resource):
    """Settings for the whole mesh. Optional; the defaults apply when it is absent.

    spec.trustDomain      SPIFFE trust domain of every identity
    spec.policyHeader     the compliance header (default x-policy-ctx)
    spec.defaultPolicy    added to requests that carry none
    spec.knownPolicies    IDs clients may send in at the ingress (with the default and the
                          workloads' own); any other value, two values, or an oversized one is
    spec.unknownPolicy    REPLACEd by the default (default) or REJECTed with 400, and counted
    spec.mtls.mode        STRICT (default) or PERMISSIVE
    spec.allowedHeaders   request headers allowed across the mesh boundary (into the ingress,
                          out to ExternalServices) besides HTTP's own and those the mesh uses
                          itself (policy header, split pins, hash headers, authorization with a
                          TokenPolicy); names, prefixes (`x-results-*`) or `*` for all. Others
                          are stripped and counted by name; `x-envoy-*` and
                          `x-forwarded-client-cert` from outside are always removed.
    spec.outboundTrafficPolicy.mode
                          REGISTRY_ONLY (default): apps may call only their spec.calls, other
                          hosts get 404; ALLOW_ANY: other hosts are passed through. Either way
                          calls to undeclared hosts are counted per host.
    spec.hopProtocol      how proxies speak to each other: http2 (default: calls multiplexed
                          over one mutual-TLS connection, ALPN h2; WebSockets as extended
                          CONNECT) or http1 (one call at a time per connection)
    """

    KIND: ClassVar[str] = "Mesh"
    SINGLETON: ClassVar[bool] = True

    spec: MeshSpec = Field(default_factory=MeshSpec)
