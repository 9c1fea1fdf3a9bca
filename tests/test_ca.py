"""The mesh CA: what a workload certificate contains, where the root lives, an operator's CA."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interstate.ca import spiffe
from interstate.ca.authority import Authority, CAError
from interstate.ca.store import CertStore

NOW = datetime(2026, 11, 3, 19, 0, tzinfo=UTC)  # election night
ID = spiffe.workload_id("fec.gov.local", "stats")


def leaf(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem.encode())[0]


def test_a_workload_certificate_is_an_x509_svid() -> None:
    authority = Authority.create("fec.gov.local", NOW)
    issued = authority.issue(ID, timedelta(hours=24), NOW)
    cert = leaf(issued.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [ID]  # exactly one URI SAN
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    key = serialization.load_pem_private_key(issued.key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    assert cert.not_valid_before_utc < NOW  # a little slack for clocks
    cert.verify_directly_issued_by(authority.cert)


def test_rotation_is_due_at_half_life_and_issues_a_new_key() -> None:
    authority = Authority.create("fec.gov.local", NOW)
    store = CertStore(authority, timedelta(minutes=2))
    first = store.current("sidecar~stats-0", ID, NOW)
    assert store.current("sidecar~stats-0", ID, NOW + timedelta(seconds=10)) is first
    half = first.rotate_at()
    assert first.not_before < half < first.not_after
    assert half == NOW + timedelta(minutes=1)  # half of its 2 minutes from issue (not from the back-dated start)
    assert store.current("sidecar~stats-0", ID, half - timedelta(seconds=1)) is first
    second = store.current("sidecar~stats-0", ID, half)
    assert second.serial != first.serial and second.key_pem != first.key_pem
    assert store.issued_total == 2
    # another identity for the same proxy (trust domain changed) is issued at once
    other = store.current("sidecar~stats-0", spiffe.workload_id("other.local", "stats"), half)
    assert other.identity.startswith("spiffe://other.local/")


def test_the_root_is_created_once_with_safe_permissions(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    first = Authority.load_or_create(folder, "fec.gov.local", NOW)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / "ca.key").st_mode) == 0o600
    again = Authority.load_or_create(folder, "fec.gov.local", NOW + timedelta(days=1))
    assert again.fingerprint == first.fingerprint  # loaded, not re-created


def _ca(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, key


def _write(folder: Path, name: str, *certs: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path = folder / name
    if key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
    else:
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def test_an_agency_intermediate_signs_and_workloads_send_the_chain(tmp_path: Path) -> None:
    root = _ca("Agency Root", None)
    intermediate = _ca("Agency Mesh Intermediate", root)
    authority = Authority.from_files(
        _write(tmp_path, "chain.pem", intermediate[0], root[0]), _write(tmp_path, "mesh.key", key=intermediate[1])
    )
    issued = authority.issue(ID, timedelta(hours=1), NOW)
    chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    assert [c.subject for c in chain] == [leaf(issued.cert_pem).subject, intermediate[0].subject]
    chain[0].verify_directly_issued_by(intermediate[0])
    assert authority.bundle_pem == root[0].public_bytes(serialization.Encoding.PEM).decode()  # peers trust the root
    assert authority.fingerprint == root[0].fingerprint(hashes.SHA256()).hex(":")


def test_an_operator_ca_that_does_not_fit_is_refused_clearly(tmp_path: Path) -> None:
    root = _ca("Agency Root", None)
    stranger = _ca("Someone Else", None)
    cert = _write(tmp_path, "root.pem", root[0])
    with pytest.raises(CAError, match="is not the key of the first certificate"):
        Authority.from_files(cert, _write(tmp_path, "wrong.key", key=stranger[1]))
    loose = _write(tmp_path, "loose.key", key=root[1])
    loose.chmod(0o644)
    with pytest.raises(CAError, match="readable by others; chmod 600 it"):
        Authority.from_files(cert, loose)
    with pytest.raises(CAError, match="cannot load the CA"):
        Authority.from_files(tmp_path / "missing.pem", loose)
