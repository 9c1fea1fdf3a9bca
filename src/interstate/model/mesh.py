"""The mesh-wide `Mesh` resource: trust domain, the policy header and its default value."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from interstate.model.base import Mtls, MtlsMode, Resource, Strict

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


HeaderName = Annotated[str, AfterValidator(_check_header)]
PolicyId = Annotated[str, AfterValidator(check_policy_id)]


class UnknownPolicy(StrEnum):
    REPLACE = "REPLACE"  # the ingress replaces it with the default policy (and counts it)
    REJECT = "REJECT"  # the ingress answers 400 (and counts it)


class MeshSpec(Strict):
    trust_domain: str = Field(default="interstate.local", pattern=r"^[a-z0-9.-]+$")
    policy_header: HeaderName = "x-policy-ctx"
    default_policy: PolicyId | None = None
    # Policy IDs clients may send in; the default and the workloads' own are always known.
    known_policies: list[PolicyId] = Field(default_factory=list)
    unknown_policy: UnknownPolicy = UnknownPolicy.REPLACE
    mtls: Mtls = Mtls(mode=MtlsMode.STRICT)


class Mesh(Resource):
    """Settings for the whole mesh. Optional; the defaults apply when it is absent.

    spec.trustDomain      SPIFFE trust domain of every identity
    spec.policyHeader     the compliance header (default x-policy-ctx)
    spec.defaultPolicy    added to requests that carry none
    spec.knownPolicies    IDs clients may send in at the ingress (with the default and the
                          workloads' own); any other value, two values, or an oversized one is
    spec.unknownPolicy    REPLACEd by the default (default) or REJECTed with 400, and counted
    spec.mtls.mode        STRICT (default) or PERMISSIVE
    """

    KIND: ClassVar[str] = "Mesh"
    SINGLETON: ClassVar[bool] = True

    spec: MeshSpec = Field(default_factory=MeshSpec)
