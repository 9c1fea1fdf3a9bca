"""The point-in-time view of the mesh that the compiler reads: validated config plus endpoints.

`MeshConfig` is what the config layer produced from files; `Endpoint`s are what the supervisor
knows is running and ready. `MeshIndex` joins them once, so compiling each proxy is lookups only.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, TypeVar

from interstate.model.access_policy import AccessPolicy
from interstate.model.base import DEFAULT_NAMESPACE, MtlsMode, Resource
from interstate.model.external_service import ExternalService
from interstate.model.gateway import Gateway
from interstate.model.mesh import HTTP_HEADERS, Mesh, MeshSpec
from interstate.model.token_policy import TokenPolicy
from interstate.model.traffic_policy import TrafficPolicy, TrafficPolicySpec
from interstate.model.traffic_split import TrafficSplit
from interstate.model.workload import Workload

T = TypeVar("T", bound=Resource)


@dataclass(frozen=True)
class MeshConfig:
    """All validated resources of one mesh, in file order, and where each came from."""

    resources: tuple[Resource, ...]
    # ref -> (file, document); not part of equality: the same resources are the same mesh
    origins: Mapping[str, tuple[str, int]] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    def origin(self, resource: Resource) -> tuple[str, int]:
        return self.origins.get(resource.ref, ("<mesh>", 0))

    def add(self, new: Resource) -> MeshConfig:
        return MeshConfig((*self.resources, new), self.origins)

    def replace(self, old: Resource, new: Resource) -> MeshConfig:
        """The same mesh with `old` swapped for `new` (same kind and name)."""
        return MeshConfig(tuple(new if r is old else r for r in self.resources), self.origins)

    def of_kind(self, cls: type[T]) -> tuple[T, ...]:
        return tuple(r for r in self.resources if isinstance(r, cls))


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ready replica of a service as callers reach it: its side-car's inbound address, or the
    app itself when the workload is not injected."""

    service: str
    replica: int
    address: str
    port: int
    version: str = "v1"


@dataclass(frozen=True)
class MeshIndex:
    config: MeshConfig
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @cached_property
    def derived(self) -> dict[Hashable, Any]:
        """Values the layers above compute from this index alone and would otherwise compute
        again for every proxy (the compiler's routes to a service, the same for all its
        callers). They live and die with the index, which never changes."""
        return {}

    @cached_property
    def mesh(self) -> MeshSpec:
        meshes = self.config.of_kind(Mesh)
        return meshes[0].spec if meshes else MeshSpec()

    @cached_property
    def workloads(self) -> Mapping[str, Workload]:
        return MappingProxyType({w.name: w for w in self.config.of_kind(Workload)})

    @cached_property
    def gateway(self) -> Gateway | None:
        gateways = self.config.of_kind(Gateway)
        return gateways[0] if gateways else None

    @cached_property
    def traffic_policies(self) -> Mapping[str, TrafficPolicy]:
        return MappingProxyType({p.spec.destination.service: p for p in self.config.of_kind(TrafficPolicy)})

    @cached_property
    def access_policies(self) -> Mapping[str, tuple[AccessPolicy, ...]]:
        """AccessPolicies by destination service (a service with none accepts any mesh caller)."""
        out: dict[str, list[AccessPolicy]] = {}
        for policy in self.config.of_kind(AccessPolicy):
            out.setdefault(policy.spec.destination.service, []).append(policy)
        return MappingProxyType({k: tuple(v) for k, v in out.items()})

    @cached_property
    def externals(self) -> Mapping[str, ExternalService]:
        return MappingProxyType({e.name: e for e in self.config.of_kind(ExternalService)})

    def account(self, service: str) -> tuple[str, str]:
        """(namespace, service account) of `service`'s identity (`Workload.account`); a name with
        no Workload (the ingress's callers, an ExternalService) keeps the default namespace."""
        workload = self.workloads.get(service)
        return workload.account if workload is not None else (DEFAULT_NAMESPACE, service)

    def policy_spec(self, service: str) -> TrafficPolicySpec | None:
        """How callers treat `service`: its TrafficPolicy, or an ExternalService's own settings."""
        policy = self.traffic_policies.get(service)
        if policy is not None:
            return policy.spec
        external = self.externals.get(service)
        return external.policy() if external is not None else None

    @cached_property
    def traffic_splits(self) -> Mapping[str, TrafficSplit]:
        return MappingProxyType({s.spec.service: s for s in self.config.of_kind(TrafficSplit)})

    def called(self, caller: str | None) -> list[str]:
        """Services a workload's clients may address by name (sorted); `caller` None is the
        ingress, whose clients address the Gateway's routes."""
        if caller is None:
            gateway = self.gateway
            return sorted({r.service for r in gateway.spec.routes}) if gateway else []
        workload = self.workloads.get(caller)
        return sorted(workload.spec.calls) if workload else []

    def callees(self, caller: str | None) -> list[str]:
        """Services `caller` (None: the ingress) sends requests to: those it calls, or their
        TrafficSplit backends. Who calls whom is the index's answer, for the compiler and the
        control plane alike."""
        return sorted({backend for service in self.called(caller) for backend, _ in self.backends(service)})

    def backends(self, service: str) -> tuple[tuple[str, int], ...]:
        """Who serves calls to `service`, with weights: its TrafficSplit's backends, else itself."""
        split = self.traffic_splits.get(service)
        if split is None:
            return ((service, 100),)
        return tuple((b.service, b.weight) for b in split.spec.backends)

    @cached_property
    def token_policies(self) -> tuple[TokenPolicy, ...]:
        return self.config.of_kind(TokenPolicy)

    @cached_property
    def known_policies(self) -> tuple[str, ...]:
        """Policy IDs the ingress accepts from clients: the Mesh's list, its default, and every
        workload's own (sorted)."""
        known = set(self.mesh.known_policies)
        known.update(p for p in [self.mesh.default_policy, *(w.policy for w in self.workloads.values())] if p)
        return tuple(sorted(known))

    @cached_property
    def boundary_headers(self) -> tuple[frozenset[str], tuple[str, ...]] | None:
        """Request headers allowed across the mesh boundary, as (names, prefixes); None when the
        Mesh allows all (`*`). HTTP's own headers and those the mesh itself reads are included."""
        listed = self.mesh.allowed_headers
        if "*" in listed:
            return None
        names = set(HTTP_HEADERS) | {h for h in listed if not h.endswith("*")}
        names.add(self.mesh.policy_header)
        if self.token_policies:
            names.add("authorization")
        hashed = [s.spec.sticky_by for s in self.traffic_splits.values()]
        hashed += [p.spec.load_balancer.hash_on for p in self.traffic_policies.values() if p.spec.load_balancer]
        for split in self.traffic_splits.values():
            if split.spec.pin is not None:
                names.add(split.spec.pin.header.name)
        names.update(on.header if on.header else "cookie" for on in hashed if on is not None)
        return frozenset(names), tuple(sorted(h[:-1] for h in listed if h.endswith("*")))

    def policy_for(self, workload: Workload | None) -> str | None:
        """The policy ID a proxy adds when the request carries none."""
        if workload is not None and workload.policy:
            return workload.policy
        return self.mesh.default_policy

    def mtls_mode(self, workload: Workload) -> MtlsMode:
        if workload.spec.mtls is not None:
            return workload.spec.mtls.mode
        return self.mesh.mtls.mode

    def endpoints_of(self, service: str) -> tuple[Endpoint, ...]:
        return tuple(sorted(self.endpoints.get(service, ())))

    def with_endpoints(self, endpoints: Mapping[str, tuple[Endpoint, ...]]) -> MeshIndex:
        return MeshIndex(self.config, MappingProxyType(dict(endpoints)))
