"""Identity of a mesh, in every mode: its CA, each proxy's X.509-SVID, and mTLS to the control plane.

- Workload certificates (SDS): one per proxy, from `CertStore`, rotated at half life, kept in
  `certs_dir/svid` so a restarted control plane serves the same ones until they are due.
- Bootstrap certificates (standalone): one per Envoy, common name = its node ID, written (0600)
  for the Envoy's static xDS cluster; the ADS server accepts a stream only for the node ID it proves.
- The control plane's own server certificate, for the gRPC listener (DNS SAN `xds.interstate`,
  which injected side-cars check in Kubernetes mode).
Owned by `core.plane.ControlPlane`; calls `ca`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from interstate.ca import spiffe
from interstate.ca.authority import Authority, Issued, utcnow
from interstate.ca.store import CertStore, write_private
from interstate.compile import Credentials, Proxy, Role
from interstate.compile.bootstrap import XdsTls
from interstate.core.status import CaStatus, CertStatus, IdentityStatus

if TYPE_CHECKING:
    import grpc

BOOTSTRAP_TTL = timedelta(days=30)  # for the xDS connection only; see README "Identity"
XDS_SERVER_NAME = "xds.interstate"


@dataclass(frozen=True)
class IdentitySettings:
    certs_dir: Path  # bootstrap certificates, the trust bundle, kept SVIDs (0700)
    ca_dir: Path  # the mesh root CA, created on first start
    ca_cert: Path | None = None  # an operator's CA instead: signing cert (+ chain to the root)
    ca_key: Path | None = None
    ca_bundle: Path | None = None  # the roots peers trust, when not the last cert of ca_cert
    cert_ttl: timedelta = timedelta(hours=24)  # workload certificates; rotated at half life
    run_id: str = ""  # the mesh run bootstrap certificates are bound to (standalone `interstate up`)


def load_authority(settings: IdentitySettings, trust_domain: str, now: datetime) -> Authority:
    if settings.ca_cert is not None and settings.ca_key is not None:
        return Authority.from_files(settings.ca_cert, settings.ca_key, settings.ca_bundle)
    return Authority.load_or_create(settings.ca_dir, trust_domain, now)


class MeshIdentity:
    def __init__(self, settings: IdentitySettings, trust_domain: str) -> None:
        now = utcnow()
        self.trust_domain = trust_domain
        self.authority = load_authority(settings, trust_domain, now)
        self.folder = settings.certs_dir
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        self.certs = CertStore(self.authority, settings.cert_ttl, self.folder / "svid")
        self.bundle_path = self.folder / "bundle.pem"
        write_private(self.bundle_path, self.authority.bundle_pem)
        self.run_id = settings.run_id
        self.server_identity = spiffe.control_plane_id(trust_domain)
        self._server_cert = self.authority.issue(self.server_identity, BOOTSTRAP_TTL, now, dns_names=(XDS_SERVER_NAME,))

    def identity_of(self, proxy: Proxy) -> str:
        if proxy.role is Role.INGRESS:
            return spiffe.system_id(self.trust_domain, "ingress")
        return spiffe.workload_id(self.trust_domain, proxy.service)

    def server_credentials(self, client_auth: bool = True) -> grpc.ServerCredentials:
        """TLS for the ADS listener; with `client_auth`, Envoys must present a certificate of this CA."""
        import grpc  # only the control plane's process needs it

        cert = self._server_cert
        return grpc.ssl_server_credentials(
            [(cert.key_pem.encode(), cert.chain_pem.encode())],
            root_certificates=self.authority.bundle_pem.encode() if client_auth else None,
            require_client_auth=client_auth,
        )

    def bootstrap_tls(self, proxy: Proxy) -> XdsTls:
        """Issue and write the certificate an Envoy uses to connect to the control plane."""
        identity = spiffe.xds_client_id(self.trust_domain, proxy.node_id, self.run_id)
        cert = self.authority.issue(identity, BOOTSTRAP_TTL, utcnow(), common_name=proxy.node_id)
        stem = proxy.node_id.replace("~", "-")
        cert_path, key_path = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        write_private(key_path, cert.key_pem)
        write_private(cert_path, cert.chain_pem)
        return XdsTls(str(cert_path), str(key_path), str(self.bundle_path), self.server_identity)

    async def proves_node(self, context: grpc.aio.ServicerContext, node_id: str) -> str | None:
        """Why an ADS stream's client certificate does not prove `node_id` (None: it does): it
        must be this run's bootstrap certificate for that node, common name and URI SAN both.
        One issued by an earlier run of the mesh on the same CA is refused."""
        auth = context.auth_context()
        names = auth.get("x509_common_name", [])
        proven = names[0].decode() if len(names) == 1 else ""
        if proven != node_id:
            return f"node {node_id!r} does not match the client certificate ({proven or 'none'})"
        expected = spiffe.xds_client_id(self.trust_domain, node_id, self.run_id)
        sans = [s.decode() for s in auth.get("x509_subject_alternative_name", [])]
        if expected not in sans:
            return f"the client certificate for {node_id!r} was not issued by this run of the mesh; restart that Envoy"
        return None

    def credentials(self, proxy: Proxy, now: datetime) -> Credentials:
        """The proxy's workload certificate now: issued on first use and again at half life."""
        cert = self.certs.current(proxy.node_id, self.identity_of(proxy), now)
        return Credentials(cert.identity, cert.chain_pem, cert.key_pem, self.authority.bundle_pem)

    def status(self, now: datetime) -> IdentityStatus:
        """The CA and every certificate in force, with how long until each rotates."""

        def one(node: str, cert: Issued) -> CertStatus:
            rotates_in = round((cert.rotate_at() - now).total_seconds(), 1)
            return CertStatus(node, cert.identity, f"{cert.serial:x}", cert.not_after.isoformat(), rotates_in)

        ca = CaStatus(
            self.authority.fingerprint, self.authority.not_after.isoformat(), self.trust_domain, self.certs.issued_total
        )
        return IdentityStatus(ca, [one(node, cert) for node, cert in self.certs.items()])
