"""Shared building blocks of the mesh resources: the resource envelope, names, durations.

Every kind (Mesh, Workload, Gateway, TrafficPolicy, ...) is a frozen pydantic model that
derives from `Resource`, lives in its own module, and is listed once in `model/__init__.py`.
A kind declares what it refers to (`references`) and what it claims mesh-wide (`claims`);
`config.validate` checks both generically, so adding a kind is adding a module.
Pure data: no I/O, no grpc, no Envoy protos.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

API_GROUP = "mesh.codifyhq.io"
DEFAULT_NAMESPACE = "default"  # of a workload's identity when nothing names one (standalone mode)
API_VERSION = f"{API_GROUP}/v1"

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# [0-9], not \d: \d would also accept other scripts' digits ("٣٠s").
_DURATION_RE = re.compile(r"^(?:([0-9]+(?:\.[0-9]+)?)(ms|us|h|m|s))+$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|us|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
# Envoy rejects durations above ~10,000 years (315,576,000,000 s); we refuse anything above a
# day, which no timeout or ejection time in a mesh needs, so the error comes from us and names
# the field. The bound is checked on the seconds, before a timedelta is made of them: '9' * 400
# seconds is a float of infinity, which timedelta cannot hold.
MAX_DURATION = timedelta(days=1)
_MAX_DURATION_SECONDS = MAX_DURATION.total_seconds()
_ECHO_CHARS = 60
_ECHO = reprlib.Repr()
_ECHO.maxlevel = 2
_ECHO.maxstring = _ECHO.maxother = _ECHO.maxlong = _ECHO_CHARS


def echo(value: Any) -> str:
    """A short repr of an input value for a validator's message, however long or deep the value:
    a string of up to 60 characters in full ('30x'), a 400-digit duration by its first and last
    few characters."""
    if isinstance(value, str) and len(value) <= _ECHO_CHARS:
        return repr(value)
    return _ECHO.repr(value)


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value) or len(value) > 63:
        raise ValueError(
            f"{value!r} is not a valid name; use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters (e.g. 'stats')"
        )
    return value


def parse_duration(value: Any) -> timedelta:
    """'250ms', '30s', '1h30m' -> timedelta; ValueError naming the value otherwise, and for more
    than `MAX_DURATION` (however many digits: never an OverflowError)."""
    if isinstance(value, timedelta):
        if value > MAX_DURATION:
            raise ValueError(f"{format_duration(value)!r} is too long; at most 24h")
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{echo(value)} is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h")
    text = value.strip()
    if not _DURATION_RE.match(text):
        raise ValueError(f"{echo(value)} is not a duration; write a number with a unit: 250ms, 30s, 5m, 1h")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    if seconds > _MAX_DURATION_SECONDS:  # also inf, before timedelta() overflows on it
        raise ValueError(f"{echo(value)} is too long; at most 24h")
    return timedelta(seconds=seconds)


Name = Annotated[str, AfterValidator(_check_name)]


def format_duration(value: timedelta) -> str:
    """timedelta -> the shortest exact text `parse_duration` reads back ('30s', '250ms', '1500us')."""
    micros = round(value.total_seconds() * 1_000_000)
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000)):
        if micros % size == 0:
            return f"{micros // size}{unit}"
    return f"{micros}us"


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str, when_used="json")
]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Percent = Annotated[int, Field(ge=0, le=100, strict=True)]
_PATH_PREFIX_RE = re.compile(r"^/[!-~]*$")


def _check_path_prefix(prefix: str) -> str:
    if not _PATH_PREFIX_RE.match(prefix) or "?" in prefix or "#" in prefix:
        raise ValueError(
            f"{prefix!r} is not a path prefix; start with '/', use printable ASCII without spaces "
            "(percent-encode anything else, as it travels on the wire), no '?' or '#' part"
        )
    return prefix


PathPrefix = Annotated[str, AfterValidator(_check_path_prefix)]


class MtlsMode(StrEnum):
    STRICT = "STRICT"  # side-cars accept only mutual TLS from mesh identities
    PERMISSIVE = "PERMISSIVE"  # also plaintext, for migrating clients into the mesh


class Protocol(StrEnum):
    """What an app speaks on its port (`Workload.spec.protocol`)."""

    HTTP = "http"  # HTTP/1.1; gRPC requests (content-type application/grpc) go over h2c anyway
    HTTP2 = "http2"  # HTTP/2 without TLS (h2c), for every request
    GRPC = "grpc"  # the same as http2, said the way gRPC users say it
    TCP = "tcp"  # opaque bytes (a database, a cache): callers reach it on a local port they declare

    @property
    def h2c(self) -> bool:
        """Every request goes to the app as HTTP/2 without TLS."""
        return self in (Protocol.HTTP2, Protocol.GRPC)


class HopProtocol(StrEnum):
    """How proxies speak to each other (`Mesh.spec.hopProtocol`)."""

    HTTP2 = "http2"  # many calls at once over one mutual-TLS connection (ALPN h2)
    HTTP1 = "http1"  # one call at a time per connection


class Mtls(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    mode: MtlsMode


class Strict(BaseModel):
    """Base of every decoded object: immutable, camelCase in YAML, unknown fields rejected."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        strict=False,
    )


class Metadata(Strict):
    name: Name
    # Kubernetes: the object's namespace (a Workload's names its identity: ns/<namespace>/sa/...);
    # in mesh files it may be given for the same purpose, and is "default" otherwise.
    namespace: Name | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class Reference:
    """A name this resource refers to, which must exist as a resource of `kind`."""

    field: str
    kind: str
    name: str


@dataclass(frozen=True)
class Claim:
    """Something this resource owns mesh-wide; two resources may not claim the same `key`."""

    field: str
    key: str
    what: str  # human words for the key, e.g. "the traffic policy of service stats"


class Resource(Strict):
    """The envelope every mesh document shares: apiVersion, kind, metadata, spec."""

    KIND: ClassVar[str] = ""
    API_VERSION: ClassVar[str] = API_VERSION
    SINGLETON: ClassVar[bool] = False  # at most one per mesh

    api_version: str
    kind: str
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def ref(self) -> str:
        return f"{self.KIND} {self.metadata.name}"

    def references(self) -> Iterable[Reference]:
        return ()

    def claims(self) -> Iterable[Claim]:
        return ()
