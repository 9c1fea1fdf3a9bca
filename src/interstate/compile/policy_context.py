"""The policy header at the mesh boundary: only known policy IDs come in through the ingress.

For each Gateway route, a route in front of it catches requests whose policy header is present
but not exactly one known ID (an unknown value, two values — Envoy joins them with a comma —
or an oversized one). Per the Mesh's `unknownPolicy`, they are sent on with the header replaced
by the default policy, or answered 400. Either way the route's name (`policy-replaced`,
`policy-rejected`) is in the access log, where `interstate status` counts it.
"""

from __future__ import annotations

import re

from envoy.config.core.v3 import base_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from interstate.compile.common import pack
from interstate.model.index import MeshIndex
from interstate.model.mesh import UnknownPolicy

REPLACED = "policy-replaced"
REJECTED = "policy-rejected"


def required_filter(index: MeshIndex, service: str) -> hcm_pb2.HttpFilter | None:
    """Fail closed at a service's side-car (`Workload.spec.requirePolicy`): an RBAC rule denies
    (403, counted as `http.inbound.rbac.policy_.denied`) requests without exactly one known ID."""
    workload = index.workloads.get(service)
    if workload is None or not workload.spec.require_policy:
        return None
    header = index.mesh.policy_header
    missing = rc.HeaderMatcher(name=header, present_match=True, invert_match=True)
    unknown = _not_known(index)
    rules = rbac.RBAC(
        action=rbac.RBAC.DENY,
        policies={
            f"{service}-requires-one-known-{header}": rbac.Policy(
                permissions=[rbac.Permission(any=True)],
                principals=[
                    rbac.Principal(header=missing),
                    rbac.Principal(and_ids=rbac.Principal.Set(ids=[rbac.Principal(header=h) for h in unknown])),
                ],
            )
        },
    )
    config = rbac_filter.RBAC(rules=rules, rules_stat_prefix="policy_")
    return hcm_pb2.HttpFilter(name="envoy.filters.http.rbac", typed_config=pack(config))


def _not_known(index: MeshIndex) -> list[rc.HeaderMatcher]:
    """Header present, and not exactly one known ID (`guard` is not used when none is known)."""
    known = "|".join(re.escape(p) for p in index.known_policies)
    name = index.mesh.policy_header
    return [
        rc.HeaderMatcher(name=name, present_match=True),
        rc.HeaderMatcher(
            name=name,
            string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=f"^(?:{known})$")),
            invert_match=True,
        ),
    ]


def guard(index: MeshIndex, routes: list[rc.Route]) -> list[rc.Route]:
    """Routes to put in front of `routes` (the ingress routes of one Gateway prefix). None when
    the mesh names no policy ID: then it has no policy context to guard, and the header is an
    ordinary one (subject to the Mesh's header allow-list like any other)."""
    out: list[rc.Route] = []
    mesh = index.mesh
    if not index.known_policies:
        return out
    for route in routes:
        guarded = rc.Route()
        guarded.CopyFrom(route)
        guarded.match.headers.extend(_not_known(index))
        guarded.typed_per_filter_config.clear()
        if mesh.unknown_policy is UnknownPolicy.REJECT or not mesh.default_policy:
            guarded.name = f"{REJECTED}|{route.name}"
            guarded.ClearField("route")
            known = ", ".join(index.known_policies) or "none"
            guarded.direct_response.CopyFrom(
                rc.DirectResponseAction(
                    status=400,
                    body={"inline_string": f"interstate: {mesh.policy_header} must be one known policy ID ({known})\n"},
                )
            )
        else:
            guarded.name = f"{REPLACED}|{route.name}"
            for name, config in route.typed_per_filter_config.items():
                guarded.typed_per_filter_config[name].CopyFrom(config)
            guarded.request_headers_to_add.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=mesh.policy_header, value=mesh.default_policy),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            )
        out.append(guarded)
    return out
