"""Who may call a side-car's app: HTTP RBAC filters for the inbound listener.

1. `svid`: a DENY rule for client certificates with more than one URI SAN. An X.509-SVID has
   exactly one, and Envoy's own SAN matching accepts a certificate if *any* SAN matches; the
   `x-forwarded-client-cert` header the connection manager sets lists every URI SAN, so two
   `URI=` entries mean a malformed identity.
2. `access`: the service's AccessPolicies as an ALLOW list (absent when it has none). Callers are
   matched by the SPIFFE ID their mTLS certificate proves; paths after normalization.
Denials get 403 with a body that says why (see `local_reply`) and are counted by Envoy as
`http.inbound.rbac.svid_.denied` and `http.inbound.rbac.access_.denied`.
"""

from __future__ import annotations

import re

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2

from interstate.ca import spiffe
from interstate.compile import tls
from interstate.compile.common import pack
from interstate.model.access_policy import INGRESS_CALLER, AccessPolicy
from interstate.model.index import MeshIndex

XFCC = "x-forwarded-client-cert"


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def svid_filter() -> hcm_pb2.HttpFilter:
    one_uri_only = rbac.RBAC(
        action=rbac.RBAC.DENY,
        policies={
            "svid-has-exactly-one-uri-san": rbac.Policy(
                permissions=[rbac.Permission(any=True)],
                principals=[
                    rbac.Principal(
                        header=route_components_pb2.HeaderMatcher(name=XFCC, string_match=_regex(".*URI=.*URI=.*"))
                    )
                ],
            )
        },
    )
    config = rbac_filter.RBAC(rules=one_uri_only, rules_stat_prefix="svid_")
    return hcm_pb2.HttpFilter(name="envoy.filters.http.rbac", typed_config=pack(config))


def caller_id(index: MeshIndex, caller: str) -> str:
    if caller == INGRESS_CALLER:
        return spiffe.system_id(index.mesh.trust_domain, "ingress")
    return tls.workload_id(index, caller)


def prefix_regex(prefix: str, any_case: bool = False) -> str:
    """`/stats` matches `/stats`, `/stats/...` and `/stats;params`; `/stats/` anything below.
    `any_case`: `/STATS` too (for rules that *require* something, where missing a spelling
    would let a request through)."""
    tail = ".*" if prefix.endswith("/") else "(?:[/;].*)?"
    return f"{'(?i)' if any_case else ''}^{re.escape(prefix)}{tail}$"


def path_prefix(prefix: str, any_case: bool = False) -> rbac.Permission:
    return rbac.Permission(url_path=path_pb2.PathMatcher(path=_regex(prefix_regex(prefix, any_case))))


def _any_of(permissions: list[rbac.Permission]) -> rbac.Permission:
    return permissions[0] if len(permissions) == 1 else rbac.Permission(or_rules=rbac.Permission.Set(rules=permissions))


def access_filter(index: MeshIndex, service: str) -> hcm_pb2.HttpFilter | None:
    policies: tuple[AccessPolicy, ...] = index.access_policies.get(service, ())
    if not policies:
        return None
    rules: dict[str, rbac.Policy] = {}
    for policy in policies:
        for i, rule in enumerate(policy.spec.allow):
            conditions = []
            if rule.methods:
                conditions.append(
                    _any_of(
                        [
                            rbac.Permission(
                                header=route_components_pb2.HeaderMatcher(
                                    name=":method", string_match=string_pb2.StringMatcher(exact=m)
                                )
                            )
                            for m in rule.methods
                        ]
                    )
                )
            if rule.path_prefixes:
                conditions.append(_any_of([path_prefix(p) for p in rule.path_prefixes]))
            permission = (
                rbac.Permission(and_rules=rbac.Permission.Set(rules=conditions))
                if conditions
                else rbac.Permission(any=True)
            )
            principals = [
                rbac.Principal(
                    authenticated=rbac.Principal.Authenticated(
                        principal_name=string_pb2.StringMatcher(exact=caller_id(index, caller))
                    )
                )
                for caller in rule.from_
            ]
            rules[f"{policy.name}[{i}]"] = rbac.Policy(permissions=[permission], principals=principals)
    config = rbac_filter.RBAC(rules=rbac.RBAC(action=rbac.RBAC.ALLOW, policies=rules), rules_stat_prefix="access_")
    return hcm_pb2.HttpFilter(name="envoy.filters.http.rbac", typed_config=pack(config))


def local_reply(service: str) -> hcm_pb2.LocalReplyConfig:
    """Say why a request was denied, in words, instead of Envoy's bare 'RBAC: access denied'."""
    text = (
        f"interstate: access denied: %DOWNSTREAM_PEER_URI_SAN% may not %REQ(:METHOD)% %REQ(:PATH)% on {service} "
        "(%RESPONSE_CODE_DETAILS%)\n"
    )
    return hcm_pb2.LocalReplyConfig(
        mappers=[
            hcm_pb2.ResponseMapper(
                # Mappers see only replies Envoy makes itself (the app's own 403s pass through
                # untouched); of those, only RBAC's denials (by their details), not an upgrade it
                # does not relay (403 upgrade_failed), which must not read "access denied".
                filter=accesslog_pb2.AccessLogFilter(
                    and_filter=accesslog_pb2.AndFilter(
                        filters=[
                            accesslog_pb2.AccessLogFilter(
                                status_code_filter=accesslog_pb2.StatusCodeFilter(
                                    comparison=accesslog_pb2.ComparisonFilter(
                                        op=accesslog_pb2.ComparisonFilter.EQ,
                                        value={"default_value": 403, "runtime_key": "interstate.rbac_status"},
                                    )
                                )
                            ),
                            accesslog_pb2.AccessLogFilter(
                                extension_filter=accesslog_pb2.ExtensionFilter(
                                    name="envoy.access_loggers.extension_filters.cel",
                                    typed_config=pack(
                                        cel_pb2.ExpressionFilter(
                                            expression="response.code_details.startsWith('rbac_access_denied')"
                                        )
                                    ),
                                )
                            ),
                        ]
                    )
                ),
                body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
                    text_format_source={"inline_string": text}
                ),
            )
        ]
    )
