"""Mutual TLS between proxies: transport sockets for clusters (client side) and listeners
(server side). Certificates arrive over SDS (see `secrets`): `default` is the proxy's own
X.509-SVID and key, `ROOTCA` the mesh trust bundle. TLS 1.3 only.

A caller verifies that the server presents exactly the SPIFFE ID of the service it called;
a side-car accepts any client certificate of the mesh's trust domain (who may call what is
decided by AccessPolicy, not by the handshake).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from interstate.ca import spiffe
from interstate.compile import names
from interstate.compile.common import ads, pack
from interstate.compile.proxy import Credentials
from interstate.model.index import MeshIndex

TLS = common_pb2.TlsParameters


def _common(san: string_pb2.StringMatcher) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_params=TLS(tls_minimum_protocol_version=TLS.TLSv1_3, tls_maximum_protocol_version=TLS.TLSv1_3),
        tls_certificate_sds_secret_configs=[secret_pb2.SdsSecretConfig(name=names.SECRET_CERT, sds_config=ads())],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=san)
                ]
            ),
            validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(name=names.SECRET_ROOT, sds_config=ads()),
        ),
    )


# What a side-car's inbound listener offers in the TLS handshake: HTTP/2 between proxies
# (`Mesh.spec.hopProtocol`), HTTP/1.1 for a caller set to http1 or a plaintext-era client.
INBOUND_ALPN = ("h2", "http/1.1")


def upstream(index: MeshIndex, service: str, alpn: str = "") -> base_pb2.TransportSocket:
    """Client side of a call to `service`: present our SVID, accept only `service`'s (its
    namespace and service account: `MeshIndex.account`); ask for `alpn` ("h2": HTTP/2) when given."""
    expected = string_pb2.StringMatcher(exact=workload_id(index, service))
    context = tls_pb2.UpstreamTlsContext(common_tls_context=_common(expected), sni=service)
    if alpn:
        context.common_tls_context.alpn_protocols.append(alpn)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def workload_id(index: MeshIndex, service: str) -> str:
    """The SPIFFE ID `service`'s side-cars carry: spiffe://<td>/ns/<namespace>/sa/<account>."""
    namespace, account = index.account(service)
    return spiffe.workload_id(index.mesh.trust_domain, account, namespace)


SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def to_outside(host: str) -> base_pb2.TransportSocket:
    """TLS to a system outside the mesh: its certificate checked against the system's CAs."""
    context = tls_pb2.UpstreamTlsContext(
        sni=host,
        common_tls_context=tls_pb2.CommonTlsContext(
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca={"filename": SYSTEM_CA_BUNDLE},
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=host)
                    )
                ],
            )
        ),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def downstream(trust_domain: str) -> base_pb2.TransportSocket:
    """Server side of a side-car: require a client certificate of this trust domain."""
    any_workload = string_pb2.StringMatcher(
        safe_regex=regex_pb2.RegexMatcher(regex=f"^spiffe://{trust_domain.replace('.', '[.]')}/ns/[^/]+/sa/[^/]+$")
    )
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common(any_workload), require_client_certificate={"value": True}
    )
    context.common_tls_context.alpn_protocols.extend(INBOUND_ALPN)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def build_secrets(credentials: Credentials | None) -> list[secret_pb2.Secret]:
    """SDS: this proxy's own certificate and key, and the trust bundle. Nothing of anybody else."""
    if credentials is None:
        return []
    return [
        secret_pb2.Secret(
            name=names.SECRET_CERT,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain={"inline_string": credentials.chain_pem},
                private_key={"inline_string": credentials.key_pem},
            ),
        ),
        secret_pb2.Secret(
            name=names.SECRET_ROOT,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca={"inline_string": credentials.bundle_pem}
            ),
        ),
    ]
