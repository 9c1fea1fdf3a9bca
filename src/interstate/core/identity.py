"""Identity of a mesh, in every mode: its CA, each proxy's X.509-SVID, and mTLS to the control plane.

- Workload certificates (SDS): one per proxy, from `CertStore`, rotated at half life, kept in
  `certs_dir/svid` so a restarted control plane serves the same ones until they are due.
- Bootstrap certificates (standalone): one per Envoy, common name = its node ID and a URI SAN
  naming the mesh run, written (0600) for the Envoy's static xDS cluster through a file-based SDS
  resource; the ADS server accepts a stream only for the node ID it proves, from this run. They
  live as long as workload certificates (`cert_ttl`) and are renewed on disk at half life
  (`renew_bootstraps`, from the rotation loop); Envoy reloads them without a restart.
- The control plane's own server certificate, for the gRPC listener (DNS SAN `xds.interstate`,
  which injected side-cars check in Kubernetes mode).
Owned by `core.plane.ControlPlane`; calls `ca`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from interstate.ca import spiffe
from interstate.ca.authority import Authority, Issued, utcnow
from interstate.ca.store import CertStore, write_private
from interstate.compile import Credentials, Proxy, Role, tls
from interstate.compile.bootstrap import XdsTls, xds_client_secret
from interstate.core.status import CaStatus, CertStatus, IdentityStatus
from interstate.model.index import MeshIndex

if TYPE_CHECKING:
    import grpc

SERVER_TTL = timedelta(days=30)  # the control plane's own certificate (gRPC listener)
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
        self.bootstraps = CertStore(self.authority, settings.cert_ttl, self.folder / "bootstrap")
        self.bundle_path = self.folder / "bundle.pem"
        write_private(self.bundle_path, self.authority.bundle_pem)
        self.run_id = settings.run_id
        for node, cert in self.bootstraps.items():  # an earlier run's: no Envoy of this run holds them
            if cert.identity != spiffe.xds_client_id(trust_domain, node, self.run_id):
                self.forget_bootstrap(node)
        self.server_identity = spiffe.control_plane_id(trust_domain)
        self._server_cert = self.authority.issue(self.server_identity, SERVER_TTL, now, dns_names=(XDS_SERVER_NAME,))

    def identity_of(self, proxy: Proxy, index: MeshIndex | None = None) -> str:
        """The SPIFFE ID `proxy`'s certificate names: its workload's namespace and service
        account as the mesh says (`MeshIndex.account`; without an index, the default namespace)."""
        if proxy.role is Role.INGRESS:
            return spiffe.system_id(self.trust_domain, "ingress")
        if index is not None:
            return tls.workload_id(index, proxy.service)
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
        """The certificate an Envoy uses to connect to the control plane (issued unless one in
        force is kept), written with the SDS file that names it."""
        self._bootstrap(proxy.node_id, utcnow())
        return XdsTls(str(self.bootstrap_sds(proxy.node_id)), str(self.bundle_path), self.server_identity)

    def bootstrap_sds(self, node_id: str) -> Path:
        """The file-based SDS resource naming `node_id`'s bootstrap certificate and key files."""
        return self.folder / f"{_stem(node_id)}.xds-client.json"

    def renew_bootstraps(self, now: datetime) -> list[str]:
        """Re-issue every bootstrap certificate past half its life and move its SDS file into
        place (Envoy reloads it); the nodes renewed."""
        due = [node for node, cert in self.bootstraps.items() if now >= cert.rotate_at()]
        for node in due:
            self._bootstrap(node, now)
        return due

    def forget_bootstrap(self, node_id: str) -> None:
        """`node_id` is gone: its bootstrap certificate is no longer renewed, its files removed."""
        self.bootstraps.forget(node_id)
        self.bootstrap_sds(node_id).unlink(missing_ok=True)
        for old in self._bootstrap_files(node_id):
            old.unlink(missing_ok=True)

    def next_rotation(self) -> datetime | None:
        """When the next certificate, workload or bootstrap, reaches half its life."""
        due = [d for d in (self.certs.next_rotation(), self.bootstraps.next_rotation()) if d is not None]
        return min(due, default=None)

    def _bootstrap(self, node_id: str, now: datetime) -> Issued:
        """Write the certificate in force under names of its own serial, then the SDS file naming
        them (atomically: Envoy never reads a new certificate with an old key), then remove the
        files of the certificate before it."""
        identity = spiffe.xds_client_id(self.trust_domain, node_id, self.run_id)
        cert = self.bootstraps.current(node_id, identity, now, common_name=node_id)
        stem = f"{_stem(node_id)}.{cert.serial:x}"
        cert_path, key_path = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        write_private(key_path, cert.key_pem)
        write_private(cert_path, cert.chain_pem)
        write_private(self.bootstrap_sds(node_id), json.dumps(xds_client_secret(str(cert_path), str(key_path))))
        for old in self._bootstrap_files(node_id):
            if old not in (cert_path, key_path):
                old.unlink(missing_ok=True)
        return cert

    def _bootstrap_files(self, node_id: str) -> list[Path]:
        stem = _stem(node_id)
        return [*self.folder.glob(f"{stem}.*.crt"), *self.folder.glob(f"{stem}.*.key")]

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

    def credentials(self, proxy: Proxy, now: datetime, index: MeshIndex | None = None) -> Credentials:
        """The proxy's workload certificate now: issued on first use, again at half life, and
        at once when its identity changed (a Workload moved to another service account)."""
        cert = self.certs.current(proxy.node_id, self.identity_of(proxy, index), now)
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


def _stem(node_id: str) -> str:
    return node_id.replace("~", "-")
