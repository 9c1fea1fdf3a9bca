"""The standalone `Workload` resource: one service, how to run it on this machine, and whom it calls.

Its annotations are the chapter's: `mesh.codifyhq.io/inject` ("enabled" | "disabled") and
`mesh.codifyhq.io/policy` (the policy ID the side-car adds to outbound requests).
`spec.resources.requests.cpu` (a Kubernetes quantity: "500m", "1", 0.5) is what a
HorizontalPodAutoscaler's CPU utilization is measured against. `spec.protocol` is what the app
speaks on its port: `http` (HTTP/1.1, the default; gRPC requests reach it over h2c, since gRPC
is HTTP/2 only), `http2` or `grpc` (h2c for every request), or `tcp` (opaque bytes: callers
list it in `spec.calls` and give it a local port in `spec.localPorts`, as Consul's upstreams do;
their side-car listens there and carries each connection to a replica over mutual TLS).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from interstate.model.base import (
    API_GROUP,
    DEFAULT_NAMESPACE,
    Duration,
    Metadata,
    Mtls,
    Name,
    Port,
    Protocol,
    Reference,
    Resource,
    Strict,
    echo,
)
from interstate.model.mesh import check_policy_id

INJECT_ANNOTATION = f"{API_GROUP}/inject"
POLICY_ANNOTATION = f"{API_GROUP}/policy"
KNOWN_ANNOTATIONS = (INJECT_ANNOTATION, POLICY_ANNOTATION)
INJECT_VALUES = ("enabled", "disabled")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What interstate itself gives every app; a workload may not redefine them.
RESERVED_ENV = frozenset(
    {
        "PORT",
        "HOST",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "INTERSTATE_SERVICE",
        "INTERSTATE_REPLICA",
        "INTERSTATE_VERSION",
    }
)


# A Kubernetes quantity: a decimal number and an optional suffix (binary Ki..Ei, decimal n..E, or
# an exponent e3). [0-9], not \d: other scripts' digits are not quantities.
_QUANTITY_RE = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,3})?$")
_QUANTITY_SUFFIX = re.compile(r"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,3})$")
_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{f"{p}i": Decimal(1024 ** (i + 1)) for i, p in enumerate("KMGTPE")},
}
MAX_QUANTITY = Decimal("1e18")  # far above anything a request or a target needs
MAX_CPU_MILLICORES = 1_000_000_000  # a million cores


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ("500m", "1", "2k", "1Gi", "1e3", or a YAML number) -> Decimal.
    ValueError naming the value otherwise."""
    hint = "write a Kubernetes quantity, e.g. 500m, 0.5, 1, 100"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{echo(value)} is not a quantity; {hint}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{echo(value)} is not a quantity; {hint}")
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    else:
        if not _QUANTITY_RE.match(value):
            raise ValueError(f"{echo(value)} is not a quantity; {hint}")
        suffix = _QUANTITY_SUFFIX.search(value)
        text, unit = (value[: suffix.start()], suffix.group()) if suffix else (value, "")
        try:
            number = Decimal(text)
            if unit[:1] in ("e", "E") and unit != "E":
                number = number.scaleb(int(unit[1:]))
            elif unit:
                number *= _SUFFIXES[unit]
        except InvalidOperation:
            raise ValueError(f"{echo(value)} is not a quantity; {hint}") from None
    if abs(number) > MAX_QUANTITY:
        raise ValueError(f"{echo(value)} is too large; at most 1E (10^18)")
    return number


def cpu_millicores(value: Any) -> int:
    """A Kubernetes CPU quantity -> millicores, rounded up as Kubernetes does ("500m" -> 500,
    "1" -> 1000, 0.25 -> 250, "0.1m" -> 1)."""
    number = parse_quantity(value)
    if number <= 0:
        raise ValueError(f"{echo(value)} must be more than 0, e.g. 500m or 1")
    millicores = math.ceil(number * 1000)
    if millicores > MAX_CPU_MILLICORES:
        raise ValueError(f"{echo(value)} is too large; at most {MAX_CPU_MILLICORES // 1000} cores")
    return millicores


def _check_cpu(value: Any) -> str:
    cpu_millicores(value)
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


# Kept as written ("500m", "1"; a YAML number becomes its text), checked to be a CPU quantity.
CpuQuantity = Annotated[str, BeforeValidator(_check_cpu)]


class ResourceRequests(Strict):
    cpu: CpuQuantity | None = None

    @property
    def cpu_millicores(self) -> int | None:
        return None if self.cpu is None else cpu_millicores(self.cpu)


class Resources(Strict):
    """Kubernetes-shaped compute resources of one replica of the app (not its side-car)."""

    requests: ResourceRequests = Field(default_factory=ResourceRequests)


class Run(Strict):
    """How to start one replica of the app. `$(PORT)` in command or env is replaced by the port
    the app must listen on (127.0.0.1 only); `python` as the first word means this interpreter."""

    command: list[str] = Field(min_length=1)
    working_dir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _program(cls, command: list[str]) -> list[str]:
        if not command[0].strip():
            raise ValueError("the first word (the program) is empty")
        return command

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid variable name; use letters, digits and '_'")
            if name in RESERVED_ENV:
                raise ValueError(f"{name!r} is set by interstate; choose another name")
        return env


class HttpGet(Strict):
    path: str = Field(pattern=r"^/[!-~]*$")  # printable ASCII, no spaces


class ReadinessProbe(Strict):
    """When an app replica may receive traffic: an HTTP GET answering 2xx/3xx, else a TCP connect."""

    http_get: HttpGet | None = None
    timeout: Duration | None = None  # how long a starting replica may take; default 30s

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be more than 0s, e.g. 30s")
        return value


class WorkloadSpec(Strict):
    port: Port
    replicas: int = Field(default=1, ge=0, le=1000, strict=True)
    version: str = Field(default="v1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    # Required in standalone mode, which starts the replicas (`_run_required`; read it with
    # `runs()`). In Kubernetes mode a Deployment runs them, so a Workload CR may omit it (the
    # loader's `kubernetes=True`).
    run: Run | None = None
    calls: list[Name] = Field(default_factory=list)
    protocol: Protocol = Protocol.HTTP  # what the app speaks on `port`
    # callee -> the local port its side-car offers it on (127.0.0.1), for `protocol: tcp` callees
    local_ports: dict[str, Port] = Field(default_factory=dict)  # keys: names in `calls`
    readiness_probe: ReadinessProbe = Field(default_factory=ReadinessProbe)
    mtls: Mtls | None = None  # overrides the Mesh's mode for this service's side-cars
    require_policy: bool = False  # fail closed: requests without one known policy ID get 403
    resources: Resources = Field(default_factory=Resources)  # requests.cpu: what CPU utilization is relative to
    # The account whose identity the workload's side-cars carry (spiffe://<td>/ns/<namespace>/sa/<it>);
    # in Kubernetes its pods must run as this ServiceAccount. Default: the workload's name.
    service_account: Name | None = None

    @model_validator(mode="after")
    def _local_ports(self) -> WorkloadSpec:
        for service, port in self.local_ports.items():
            if service not in self.calls:
                raise ValueError(f"localPorts.{service}: {service!r} is not in spec.calls; list it there too")
            again = [s for s, p in self.local_ports.items() if p == port and s < service]
            if again:
                raise ValueError(f"localPorts.{service}: port {port} is also {again[0]!r}'s; give each its own")
        if self.protocol is Protocol.TCP and self.readiness_probe.http_get is not None:
            raise ValueError(
                "readinessProbe.httpGet: a tcp workload is probed by connecting to its port; remove httpGet"
            )
        return self

    @model_validator(mode="after")
    def _run_required(self, info: ValidationInfo) -> WorkloadSpec:
        if self.run is None and not (info.context or {}).get("kubernetes"):
            raise ValueError("run: required field is missing; standalone mode starts each replica with run.command")
        return self

    def runs(self) -> Run:
        """How standalone mode starts a replica (always there in a standalone mesh)."""
        if self.run is None:
            raise ValueError("this Workload has no spec.run (a Kubernetes Workload); standalone mode needs one")
        return self.run

    @field_validator("calls")
    @classmethod
    def _no_duplicate_calls(cls, calls: list[str]) -> list[str]:
        seen = [c for i, c in enumerate(calls) if c in calls[:i]]
        if seen:
            raise ValueError(f"{seen[0]!r} is listed twice; list each service once")
        return calls


class Workload(Resource):
    KIND: ClassVar[str] = "Workload"

    spec: WorkloadSpec

    @property
    def account(self) -> tuple[str, str]:
        """(namespace, service account) whose identity its side-cars carry: the object's
        namespace ("default" in mesh files without one) and `spec.serviceAccount` or its name."""
        return (self.metadata.namespace or DEFAULT_NAMESPACE, self.spec.service_account or self.name)

    @field_validator("metadata")
    @classmethod
    def _check_annotations(cls, metadata: Metadata) -> Metadata:
        for key, value in metadata.annotations.items():
            where = f"metadata.annotations.{key}"
            if key.startswith(API_GROUP + "/") and key not in KNOWN_ANNOTATIONS:
                raise ValueError(f"{where}: unknown annotation; known: {', '.join(KNOWN_ANNOTATIONS)}")
            if key == INJECT_ANNOTATION and value not in INJECT_VALUES:
                valid = " or ".join(repr(v) for v in INJECT_VALUES)
                raise ValueError(f"{where}: {value!r} is not valid; use {valid}")
            if key == POLICY_ANNOTATION:
                try:
                    check_policy_id(value)
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
        return metadata

    @field_validator("metadata")
    @classmethod
    def _not_reserved(cls, metadata: Metadata) -> Metadata:
        if metadata.name == "ingress":
            raise ValueError("metadata.name: 'ingress' is reserved for the mesh's ingress gateway; choose another name")
        return metadata

    @model_validator(mode="after")
    def _not_self(self) -> Workload:
        if self.name in self.spec.calls:
            raise ValueError("spec.calls: a workload does not call itself through the mesh")
        return self

    def same_template(self, other: Workload) -> bool:
        """True when replicas of `other` are interchangeable with ours: everything but the count."""
        return self.model_dump(exclude={"spec": {"replicas"}}) == other.model_dump(exclude={"spec": {"replicas"}})

    @property
    def injected(self) -> bool:
        return self.metadata.annotations.get(INJECT_ANNOTATION, "enabled") == "enabled"

    @property
    def policy(self) -> str | None:
        return self.metadata.annotations.get(POLICY_ANNOTATION)

    def references(self) -> Iterable[Reference]:
        for i, callee in enumerate(self.spec.calls):
            yield Reference(f"spec.calls[{i}]", "Workload|ExternalService", callee)
