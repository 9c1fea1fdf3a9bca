"""Mesh-wide rules over decoded resources: duplicates, singletons, references, claims, that a
workload requiring a policy ID has one to require, and how `protocol: tcp` services are called.

The first four are generic over kinds (each kind says what it references and claims), so a new
kind needs no change for them. Returns issues; never raises, never does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from interstate.errors import Issue
from interstate.model import Gateway, Mesh, Resource, Workload
from interstate.model.base import Protocol


@dataclass(frozen=True)
class Located:
    resource: Resource
    file: str
    document: int

    def issue(self, field: str, message: str) -> Issue:
        return Issue(self.file, self.document, self.resource.ref, field, message)

    @property
    def where(self) -> str:
        return f"{self.file} document {self.document}"


def check(located: Iterable[Located], invalid: Collection[tuple[str, str]] = ()) -> list[Issue]:
    """Mesh-wide issues. `invalid` holds (kind, name) of documents that failed to decode: their
    own issues are reported already, so references to them are not reported again as unknown."""
    items = list(located)
    issues: list[Issue] = []
    by_key: dict[tuple[str, str], Located] = {}
    singletons: dict[str, Located] = {}
    for item in items:
        res = item.resource
        key = (res.KIND, res.name)
        if key in by_key:
            issues.append(
                item.issue("metadata.name", f"duplicate {res.KIND} {res.name!r}; first defined in {by_key[key].where}")
            )
        else:
            by_key[key] = item
        if res.SINGLETON:
            first = singletons.setdefault(res.KIND, item)
            if first is not item and first.resource.name != res.name:  # same name: reported above
                issues.append(
                    item.issue("kind", f"only one {res.KIND} is allowed per mesh; another is in {first.where}")
                )

    names_by_kind: dict[str, list[str]] = {}
    for kind, name in by_key:
        names_by_kind.setdefault(kind, []).append(name)

    claimed: dict[str, Located] = {}
    for item in items:
        for ref in item.resource.references():
            kinds = ref.kind.split("|")  # "Workload|ExternalService": either will do
            if not any((k, ref.name) in by_key or (k, ref.name) in invalid for k in kinds):
                valid = sorted(n for k in kinds for n in names_by_kind.get(k, []))
                hint = f"known: {', '.join(valid)}" if valid else f"no {' or '.join(kinds)} is defined"
                issues.append(item.issue(ref.field, f"unknown service {ref.name!r}; {hint}"))
        for claim in item.resource.claims():
            first = claimed.setdefault(claim.key, item)
            if first is not item:
                issues.append(
                    item.issue(
                        claim.field, f"conflicts with {first.resource.ref} ({first.where}): both define {claim.what}"
                    )
                )
    return issues + _policy_required_but_none_named(items) + _tcp_calls(items)


def _policy_required_but_none_named(items: list[Located]) -> list[Issue]:
    """`requirePolicy: true` in a mesh that names no policy ID would refuse every request."""
    named = any(
        (isinstance(r, Mesh) and (r.spec.default_policy or r.spec.known_policies))
        or (isinstance(r, Workload) and r.policy)
        for r in (item.resource for item in items)
    )
    if named:
        return []
    return [
        item.issue(
            "spec.requirePolicy",
            "no policy ID is named anywhere in the mesh, so every request would be refused; name one "
            "(Mesh spec.defaultPolicy or spec.knownPolicies, or a Workload's mesh.codifyhq.io/policy "
            "annotation) or leave requirePolicy out",
        )
        for item in items
        if isinstance(item.resource, Workload) and item.resource.spec.require_policy
    ]


def _tcp_calls(items: list[Located]) -> list[Issue]:
    """A `protocol: tcp` service is reached on a local port only: its callers give it one (and
    only it), the Gateway (HTTP) does not route to it, and one port means one service."""
    tcp = {
        item.resource.name
        for item in items
        if isinstance(item.resource, Workload) and item.resource.spec.protocol is Protocol.TCP
    }
    issues: list[Issue] = []
    port_of: dict[int, tuple[str, Located]] = {}
    for item in items:
        res = item.resource
        if isinstance(res, Gateway):
            for i, route in enumerate(res.spec.routes):
                if route.service in tcp:
                    issues.append(
                        item.issue(
                            f"spec.routes[{i}].service",
                            f"{route.service!r} speaks tcp; the Gateway routes HTTP only",
                        )
                    )
        if not isinstance(res, Workload):
            continue
        for i, callee in enumerate(res.spec.calls):
            if callee in tcp and callee not in res.spec.local_ports:
                issues.append(
                    item.issue(
                        f"spec.calls[{i}]",
                        f"{callee!r} speaks tcp: give it a local port, e.g. localPorts: {{{callee}: 6379}}",
                    )
                )
        for callee, port in res.spec.local_ports.items():
            if callee not in tcp:
                issues.append(
                    item.issue(
                        f"spec.localPorts.{callee}",
                        f"{callee!r} is called over HTTP (by name through the side-car); only a "
                        "protocol: tcp service takes a local port",
                    )
                )
            first = port_of.setdefault(port, (callee, item))
            if first[0] != callee:
                issues.append(
                    item.issue(
                        f"spec.localPorts.{callee}",
                        f"port {port} is {first[0]!r}'s in {first[1].resource.ref} ({first[1].where}); "
                        "callers on one machine share their local ports, so give each service its own",
                    )
                )
    return issues
