"""The certificate authority: root key and certificate, and issuing X.509-SVIDs.

A root is created on first start and kept on disk (`ca.key` 0600 in a 0700 folder), or loaded
from files the operator provides (an agency's own CA, root or intermediate). Workload
certificates carry exactly one URI SAN (the SPIFFE ID), are not CAs, use EC P-256 and live
`ttl` (default 24 h). Time is passed in (`now`), so tests need no clock.
Called by the standalone supervisor and the `ca`/`certs` CLI commands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interstate.errors import PermanentError

ROOT_TTL = timedelta(days=3650)
CLOCK_SKEW = timedelta(minutes=1)  # not_before is back-dated this much
ROOT_CERT_FILE = "ca.pem"
ROOT_KEY_FILE = "ca.key"


class CAError(PermanentError):
    pass


_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def key_usage(*allowed: str) -> x509.KeyUsage:
    """A KeyUsage extension with exactly `allowed` set."""
    return x509.KeyUsage(**{name: name in allowed for name in _KEY_USAGES})


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM, with the facts the CLI and rotation need."""

    identity: str  # the SPIFFE ID (its only URI SAN)
    cert_pem: str
    chain_pem: str  # leaf first, then any intermediates up to (not including) the root
    key_pem: str
    serial: int
    not_before: datetime
    not_after: datetime

    def rotate_at(self) -> datetime:
        """Half-way through its life, counted from when it was issued (`not_before` is back-dated
        by CLOCK_SKEW for peers whose clocks lag: a 1-minute certificate is due after 30 s, not
        at once)."""
        issued = self.not_before + CLOCK_SKEW
        return issued + (self.not_after - issued) / 2


class Authority:
    def __init__(
        self,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        intermediates: tuple[x509.Certificate, ...] = (),
        roots: tuple[x509.Certificate, ...] = (),
    ) -> None:
        """`cert`/`key` sign workload certificates; `intermediates` lie between `cert` and the
        root; `roots` are what peers trust (default: `cert` itself, a self-signed root)."""
        self.cert = cert
        self.key = key
        self.roots = roots or (cert,)
        signing = () if cert in self.roots else (cert,)
        self._chain_suffix = "".join(_pem(c) for c in (*signing, *intermediates))

    # ---- creating and loading --------------------------------------------------------------
    @classmethod
    def create(cls, trust_domain: str, now: datetime) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "interstate"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"interstate root CA {trust_domain}"),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ROOT_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                key_usage("digital_signature", "key_cert_sign", "crl_sign"),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, folder: Path, trust_domain: str, now: datetime) -> Authority:
        """The root kept in `folder`, created there (0700 folder, 0600 key) on first use."""
        cert_path, key_path = folder / ROOT_CERT_FILE, folder / ROOT_KEY_FILE
        if cert_path.exists() or key_path.exists():
            return cls.from_files(cert_path, key_path)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        authority = cls.create(trust_domain, now)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(_key_pem(authority.key))
        cert_path.write_text(_pem(authority.cert))
        return authority

    @classmethod
    def from_files(cls, cert_path: Path, key_path: Path, bundle_path: Path | None = None) -> Authority:
        """An operator's CA: `cert_path` holds the signing certificate (then any intermediates up
        to the root), `key_path` its key; `bundle_path` the roots peers trust (default: the last
        certificate in `cert_path`)."""
        try:
            certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            bundle = tuple(x509.load_pem_x509_certificates(bundle_path.read_bytes())) if bundle_path else ()
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot load the CA from {cert_path} and {key_path}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{key_path}: the CA key must be an EC key (P-256 recommended)")
        if key.public_key().public_numbers() != certs[0].public_key().public_numbers():  # type: ignore[union-attr]
            raise CAError(f"{key_path} is not the key of the first certificate in {cert_path}")
        basic = certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value
        if not basic.ca:
            raise CAError(f"{cert_path}: the first certificate is not a CA (BasicConstraints CA:FALSE)")
        if key_path.stat().st_mode & 0o077:
            raise CAError(f"{key_path}: the CA key is readable by others; chmod 600 it")
        if bundle:
            return cls(certs[0], key, tuple(certs[1:]), bundle)
        return cls(certs[0], key, tuple(certs[1:-1]), (certs[-1],))

    # ---- facts -----------------------------------------------------------------------------
    @property
    def bundle_pem(self) -> str:
        return "".join(_pem(c) for c in self.roots)

    @property
    def signing_pem(self) -> str:
        """The signing certificate, then its intermediates (what `from_files` reads as `cert_path`)."""
        return _pem(self.cert) + self._chain_suffix

    @property
    def key_pem(self) -> str:
        """The signing key, PEM: only for storing the CA where its owner keeps it (a Secret)."""
        return _key_pem(self.key)

    @property
    def fingerprint(self) -> str:
        return self.roots[0].fingerprint(hashes.SHA256()).hex(":")

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    # ---- issuing ---------------------------------------------------------------------------
    def issue(
        self,
        identity: str,
        ttl: timedelta,
        now: datetime,
        common_name: str | None = None,
        dns_names: tuple[str, ...] = (),
    ) -> Issued:
        """An X.509-SVID for `identity` (its one URI SAN), valid from now (less skew) for `ttl`.
        `dns_names` are for the control plane's own server certificate only."""
        if ttl <= timedelta(0):
            raise CAError(f"certificate lifetime must be positive, got {ttl}")
        key = ec.generate_private_key(ec.SECP256R1())
        not_before = now - CLOCK_SKEW
        not_after = min(now + ttl, self.not_after)
        serial = x509.random_serial_number()
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "interstate")]
            + ([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                key_usage("digital_signature", "key_agreement"),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(identity), *(x509.DNSName(d) for d in dns_names)]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_pem = _pem(cert)
        return Issued(identity, cert_pem, cert_pem + self._chain_suffix, _key_pem(key), serial, not_before, not_after)


def utcnow() -> datetime:
    return datetime.now(UTC)
