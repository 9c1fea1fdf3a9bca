"""What no side-car forwards a call to: this host's own addresses (loopback, unspecified,
link-local, and the addresses of the host, pod or node the proxy runs on: `Proxy.host_addresses`).

A workload's outbound listener passes calls to hosts no resource declares under `ALLOW_ANY`
(`passthrough`), and to each `ExternalService`. Left alone, `http://127.0.0.1:<port>/` (or
`localhost`, `0x7f000001`, `2130706433`, a DNS name that resolves to 127.0.0.1) would reach any
port of the host: other apps' plaintext ports, the admin API, anything else listening there.
Envoy's upstream RBAC filter checks the address a call is really about to connect to, after
DNS, and refuses it (403, before any connection; `local_reply` says why). The mesh's own
services are reached through their own clusters, which carry no such guard; an ExternalService
that says `allowLoopback: true` is not guarded either (and may not point at a port the mesh
owns: `standalone.preflight`). Called by `clusters` (guards) and `listeners` (the reply).
"""

from __future__ import annotations

import ipaddress

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import address_pb2, substitution_format_string_pb2
from envoy.config.core.v3 import extension_pb2 as extension
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.rbac.matchers.upstream_ip_port.v3 import upstream_ip_port_matcher_pb2 as upstream_ip
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_pb2

from interstate.compile.common import pack

# The host's own addresses, whatever name or spelling a call used for them (IPv4-mapped too).
FORBIDDEN = (
    "127.0.0.0/8",
    "0.0.0.0/8",
    "169.254.0.0/16",
    "::1/128",
    "::/128",
    "fe80::/10",
    "::ffff:127.0.0.0/104",
    "::ffff:0.0.0.0/104",
    "::ffff:169.254.0.0/112",
)
POLICY = "host-own-address"
STAT_PREFIX = "egress_"  # counted as cluster.<name>.upstream_rbac... / `egress_` denials


def _cidr(text: str) -> address_pb2.CidrRange:
    network = ipaddress.ip_network(text)
    return address_pb2.CidrRange(address_prefix=str(network.network_address), prefix_len={"value": network.prefixlen})


def _upstream_in(network: str) -> rbac.Permission:
    matcher = upstream_ip.UpstreamIpPortMatcher(upstream_ip=_cidr(network))
    return rbac.Permission(
        matcher=extension.TypedExtensionConfig(name="envoy.rbac.matchers.upstream_ip_port", typed_config=pack(matcher))
    )


def _networks(host_addresses: tuple[str, ...]) -> list[str]:
    """`FORBIDDEN`, then each of the host's own addresses as a network of one (IPv4-mapped too)."""
    out = list(FORBIDDEN)
    for text in host_addresses:
        address = ipaddress.ip_address(text)
        out.append(f"{address}/{address.max_prefixlen}")
        if address.version == 4:
            out.append(f"::ffff:{address}/128")
    return out


def guard(
    options: http_options_pb2.HttpProtocolOptions, host_addresses: tuple[str, ...] = ()
) -> http_options_pb2.HttpProtocolOptions:
    """`options` (a cluster's HTTP options) with the upstream filters that refuse the host's own
    addresses (`FORBIDDEN` and `host_addresses`, the proxy's `Proxy.host_addresses`), then the
    codec every upstream filter chain ends with."""
    networks = _networks(host_addresses)
    rules = rbac.RBAC(
        action=rbac.RBAC.DENY,
        policies={
            POLICY: rbac.Policy(
                permissions=[rbac.Permission(or_rules=rbac.Permission.Set(rules=[_upstream_in(n) for n in networks]))],
                principals=[rbac.Principal(any=True)],
            )
        },
    )
    config = rbac_filter.RBAC(rules=rules, rules_stat_prefix=STAT_PREFIX)
    out = http_options_pb2.HttpProtocolOptions()
    out.CopyFrom(options)
    out.http_filters.extend(
        [
            hcm_pb2.HttpFilter(name="envoy.filters.http.upstream_rbac", typed_config=pack(config)),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.upstream_codec", typed_config=pack(upstream_codec_pb2.UpstreamCodec())
            ),
        ]
    )
    return out


def refused_reply() -> hcm_pb2.ResponseMapper:
    """The outbound listener's answer when the guard refused a call, in words."""
    text = (
        "interstate: a side-car forwards nothing to this host's own addresses (loopback, link-local, "
        "unspecified, its interfaces): %REQ(:AUTHORITY)% is one; call the service by its mesh name "
        "(%RESPONSE_CODE_DETAILS%)\n"
    )
    details = f"response.code_details == 'rbac_access_denied_matched_policy[{POLICY}]'"
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            extension_filter=accesslog_pb2.ExtensionFilter(
                name="envoy.access_loggers.extension_filters.cel",
                typed_config=pack(cel_pb2.ExpressionFilter(expression=details)),
            )
        ),
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source={"inline_string": text}
        ),
    )
