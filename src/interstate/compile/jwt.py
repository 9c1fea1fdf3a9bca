"""JWT checks at the ingress: the `jwt_authn` filter for TokenPolicies, then an RBAC filter for
their role requirements. Before the router, so no app sees a request that fails them.

jwt_authn answers 401 itself (missing, expired, bad signature, wrong issuer or audience) on the
paths a TokenPolicy requires and ignores every other path. A required prefix matches in any
letter case and with `;params` (`/RESULTS`, `/results;x=1`): a spelling of the path that some
app reads as the same resource must not skip the token (paths are normalized before this).
A verified token's payload is kept in dynamic metadata, where the role rule reads
`<roleClaim>`; no listed role means 403.
"""

from __future__ import annotations

import re

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2

from interstate.compile import authz
from interstate.compile.common import pack
from interstate.model.index import MeshIndex

JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "jwt_payload"
FAILURE_KEY = "jwt_failure"


def _provider_name(issuer: str) -> str:
    return "issuer-" + re.sub(r"[^A-Za-z0-9]+", "-", issuer).strip("-")


def _prefix_match(prefix: str) -> route_components_pb2.RouteMatch:
    # the regex sees the path without its query
    return route_components_pb2.RouteMatch(
        safe_regex=regex_pb2.RegexMatcher(regex=authz.prefix_regex(prefix, any_case=True))
    )


def filters(index: MeshIndex) -> list[hcm_pb2.HttpFilter]:
    """The ingress's token filters, in order; empty when there is no TokenPolicy."""
    policies = index.token_policies
    if not policies:
        return []
    providers: dict[str, jwt.JwtProvider] = {}
    rules: list[tuple[str, jwt.RequirementRule]] = []  # (prefix, rule)
    roles: list[tuple[str, str, list[str]]] = []  # (prefix, claim, roles)
    for policy in policies:
        names = []
        for issuer in policy.spec.issuers:
            name = _provider_name(issuer.issuer)
            names.append(name)
            providers[name] = jwt.JwtProvider(
                issuer=issuer.issuer,
                audiences=issuer.audiences,
                local_jwks={"inline_string": issuer.jwks.text},
                payload_in_metadata=PAYLOAD_KEY,
                failed_status_in_metadata=FAILURE_KEY,
                forward=True,
                clock_skew_seconds=30,
            )
        requirement = (
            jwt.JwtRequirement(provider_name=names[0])
            if len(names) == 1
            else jwt.JwtRequirement(
                requires_any=jwt.JwtRequirementOrList(requirements=[jwt.JwtRequirement(provider_name=n) for n in names])
            )
        )
        for req in policy.spec.require:
            rules.append(
                (req.path_prefix, jwt.RequirementRule(match=_prefix_match(req.path_prefix), requires=requirement))
            )
            if req.roles:
                roles.append((req.path_prefix, policy.spec.role_claim, req.roles))
    # Longer prefixes first: Envoy applies the first rule that matches.
    rules.sort(key=lambda r: -len(r[0]))
    authn = jwt.JwtAuthentication(providers=providers, rules=[rule for _, rule in rules])
    out = [hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=pack(authn))]
    if roles:
        out.append(_roles_filter(roles))
    return out


def failure_is_401() -> hcm_pb2.ResponseMapper:
    """Every token failure is 401. Envoy answers 403 for a wrong audience; to a client that is
    the same mistake as a wrong issuer (get another token), and role denials keep their 403."""
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            metadata_filter=accesslog_pb2.MetadataFilter(
                matcher=metadata_pb2.MetadataMatcher(
                    filter=JWT_FILTER,
                    path=[metadata_pb2.MetadataMatcher.PathSegment(key=FAILURE_KEY)],
                    value=value_pb2.ValueMatcher(present_match=True),
                ),
                match_if_key_not_found={"value": False},
            )
        ),
        status_code={"value": 401},
    )


def _has_role(claim: str, allowed: list[str]) -> rbac.Principal:
    """The token's `claim` is one of `allowed`, or a list holding one of them."""
    each = [value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=r)) for r in allowed]
    # Envoy wants two or more alternatives in an OrMatcher
    any_allowed = (
        each[0] if len(each) == 1 else value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=each))
    )
    path = [
        metadata_pb2.MetadataMatcher.PathSegment(key=PAYLOAD_KEY),
        metadata_pb2.MetadataMatcher.PathSegment(key=claim),
    ]
    as_list = value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=any_allowed))
    return rbac.Principal(
        or_ids=rbac.Principal.Set(
            ids=[
                rbac.Principal(metadata=metadata_pb2.MetadataMatcher(filter=JWT_FILTER, path=path, value=matcher))
                for matcher in (as_list, any_allowed)
            ]
        )
    )


def _roles_filter(roles: list[tuple[str, str, list[str]]]) -> hcm_pb2.HttpFilter:
    policies: dict[str, rbac.Policy] = {}
    restricted = []
    for prefix, claim, allowed in roles:
        permission = authz.path_prefix(prefix, any_case=True)
        restricted.append(permission)
        policies[f"roles{prefix}"] = rbac.Policy(
            permissions=[permission],
            principals=[_has_role(claim, allowed)],
        )
    # Everything outside the role-restricted prefixes is not this filter's business.
    policies["unrestricted-paths"] = rbac.Policy(
        permissions=[rbac.Permission(not_rule=rbac.Permission(or_rules=rbac.Permission.Set(rules=restricted)))],
        principals=[rbac.Principal(any=True)],
    )
    config = rbac_filter.RBAC(rules=rbac.RBAC(action=rbac.RBAC.ALLOW, policies=policies), rules_stat_prefix="roles_")
    return hcm_pb2.HttpFilter(name="envoy.filters.http.rbac", typed_config=pack(config))
