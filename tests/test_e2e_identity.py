"""End-to-end: identity in the election-night example under `interstate up` — mutual TLS 1.3
between side-cars with SPIFFE IDs, what a side-car's inbound port refuses (and that the app never
sees it), AccessPolicy enforced by side-car RBAC on normalized paths, PERMISSIVE mode, and the
`certs` / `ca show` commands. Real Envoy side-cars, real apps, real TLS on 127.0.0.1.

Requests that test path handling go through a raw TLS socket with an exact request line, since
httpx normalizes paths itself; client certificates are minted with the mesh's own CA
(`MeshRun.authority()`) or, for the negative cases, built by hand below.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mesh_runner import EXAMPLE, MeshRun, cli, envoy_stats, running_mesh, wait_for

from interstate.ca.authority import Authority, utcnow

pytestmark = pytest.mark.e2e

TRUST_DOMAIN = "fec.gov.local"
RESULTS_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/results"
STATS_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/stats"
INGRESS_ID = f"spiffe://{TRUST_DOMAIN}/ns/interstate-system/sa/ingress"
TESTER_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/tester"
DENIED = b"interstate: access denied"
APP_REQUESTS = "cluster.inbound|stats.upstream_rq_total"  # requests the stats side-car sent its app


# ---- helpers --------------------------------------------------------------------------------


def get(url: str, **kw: Any) -> httpx.Response:
    return httpx.get(url, timeout=10, trust_env=False, **kw)


def sidecar(mesh: MeshRun, service: str, index: int = 0) -> dict[str, Any]:
    return dict(mesh.status()["services"][service]["replicas"][index]["sidecar"])


def counter(admin: int, name: str) -> int:
    """One Envoy stat by exact name; 0 when Envoy has not created it yet (nothing counted)."""
    return envoy_stats(admin, f"^{re.escape(name)}$").get(name, 0)


def listener_stat(admin: str, suffix: str) -> int:
    """A TLS stat summed over the proxy's listeners (`listener.<address>.ssl.<suffix>`)."""
    stats = envoy_stats(admin, rf"^listener\..*\.ssl\.{re.escape(suffix)}$")
    return sum(stats.values())


def access_log(path: str) -> list[dict[str, Any]]:
    """The JSON access-log lines of a side-car's log file (Envoy's own log lines are skipped)."""
    lines = []
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line still being written
    return lines


def logged(path: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in access_log(path) if all(e.get(k) == v for k, v in fields.items())]


def context(folder: Path, bundle_pem: str, chain_pem: str | None = None, key_pem: str | None = None) -> ssl.SSLContext:
    """A TLS client context trusting `bundle_pem` (the side-car's identity is a SPIFFE URI, not a
    host name, so only its chain is verified), presenting `chain_pem`/`key_pem` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem)
    if chain_pem is not None and key_pem is not None:
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".pem", delete=False) as cert:
            cert.write(chain_pem)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".key", delete=False) as key:
            key.write(key_pem)
        ctx.load_cert_chain(cert.name, key.name)
    return ctx


def svid_context(mesh: MeshRun, folder: Path, service: str) -> ssl.SSLContext:
    """What a side-car of `service` would present: a fresh X.509-SVID from the mesh CA."""
    authority = mesh.authority()
    issued = authority.issue(f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}", timedelta(hours=1), utcnow())
    return context(folder, authority.bundle_pem, issued.chain_pem, issued.key_pem)


def hand_made(authority: Authority, uris: list[str], not_before: datetime, not_after: datetime) -> tuple[str, str]:
    """A client certificate signed by `authority` with exactly these URI SANs and validity, for
    the shapes the mesh CA itself never issues. Returns (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "not interstate")]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def raw_request(port: int, path: str, host: str = "stats:8080", ctx: ssl.SSLContext | None = None) -> bytes:
    """Send exactly `GET <path> HTTP/1.1` (no client-side normalization); read the response up to
    its content-length (Envoy waits a while for the client to close after a local reply), or to EOF."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        with ctx.wrap_socket(plain) if ctx is not None else plain as sock:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                raw += chunk
                head, sep, body = raw.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
    return raw


def status_and_body(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    assert match, f"not an HTTP response: {raw[:200]!r}"
    return int(match.group(1)), body


def refused(port: int, ctx: ssl.SSLContext | None) -> None:
    """Try a request that must not get through: the connection must end without any HTTP
    response. With TLS 1.3 a rejected client certificate shows up after the handshake, as an
    alert (or a reset) on the first read."""
    try:
        raw = raw_request(port, "/stats", ctx=ctx)
    except (ssl.SSLError, ConnectionError):
        return
    assert not raw.startswith(b"HTTP/"), f"the side-car answered: {raw[:300]!r}"


# ---- one shared mesh for read-only checks ---------------------------------------------------


def test_sidecars_talk_tls13_with_the_right_spiffe_ids(example_mesh: MeshRun) -> None:
    # First in this module on purpose: results' side-cars have no pooled connection to stats
    # yet, so this request makes a new TLS handshake on stats' inbound listener.
    stats_car = sidecar(example_mesh, "stats")
    tls13_before = listener_stat(stats_car["admin"], "versions.TLSv1.3")
    request_id = str(uuid.uuid4())

    response = get(example_mesh.ingress + "/results", headers={"x-request-id": request_id})
    assert response.status_code == 200, response.text

    assert listener_stat(stats_car["admin"], "versions.TLSv1.3") > tls13_before
    # Every hop of this request, by its x-request-id (the apps pass it on). Envoy flushes access
    # logs to its log file every 10 s, hence the generous wait.
    cars = [r["sidecar"] for svc in ("results", "stats") for r in example_mesh.status()["services"][svc]["replicas"]]

    def hops() -> dict[tuple[str, str], dict[str, Any]]:
        lines = [e for car in cars for e in logged(car["log"], request_id=request_id)]
        found = {(e["proxy"].split("~")[1].rsplit("-", 1)[0], e["direction"]): e for e in lines}
        return found if len(found) >= 3 else {}

    seen = wait_for(hops, timeout=25, what="three access-log lines")
    assert set(seen) == {("results", "inbound"), ("results", "outbound"), ("stats", "inbound")}, seen
    # ingress -> results: mutual TLS 1.3, the caller proved it is the ingress
    assert (seen["results", "inbound"]["peer"], seen["results", "inbound"]["tls"]) == (INGRESS_ID, "TLSv1.3")
    # results -> stats: results' side-car verified it reached stats ...
    assert seen["results", "outbound"]["upstream_peer"] == STATS_ID
    assert seen["results", "outbound"]["proxy"] == seen["results", "inbound"]["proxy"]  # one replica, both hops
    # ... and stats' side-car saw a results certificate over TLS 1.3
    stats_in = seen["stats", "inbound"]
    assert (stats_in["peer"], stats_in["tls"], stats_in["status"]) == (RESULTS_ID, "TLSv1.3", 200)


CASES = ["plaintext", "tls-without-client-cert", "another-ca", "expired", "another-trust-domain", "two-uri-sans"]
# What the side-car counts when it rejects each case: why it refused, not just that it did
# (`ssl.*` on its inbound listener, or the named stat).
REASON = {
    "plaintext": "ssl.connection_error",
    "tls-without-client-cert": "ssl.fail_verify_no_cert",
    "another-ca": "ssl.fail_verify_error",
    "expired": "ssl.fail_verify_error",
    "another-trust-domain": "ssl.fail_verify_san",
    "two-uri-sans": "http.inbound.rbac.svid_.denied",
}


def bad_client(case: str, mesh: MeshRun, folder: Path) -> ssl.SSLContext | None:
    authority, now = mesh.authority(), utcnow()
    tester = [TESTER_ID]
    valid = (now - timedelta(minutes=1), now + timedelta(hours=1))
    if case == "plaintext":
        return None
    if case == "tls-without-client-cert":
        return context(folder, authority.bundle_pem)
    if case == "another-ca":
        other = Authority.create(TRUST_DOMAIN, now)  # same trust domain, same SPIFFE ID, wrong CA
        issued = other.issue(TESTER_ID, timedelta(hours=1), now)
        return context(folder, authority.bundle_pem, issued.chain_pem, issued.key_pem)
    if case == "expired":
        cert, key = hand_made(authority, tester, now - timedelta(hours=2), now - timedelta(hours=1))
    elif case == "another-trust-domain":
        cert, key = hand_made(authority, ["spiffe://elsewhere.example/ns/default/sa/tester"], *valid)
    elif case == "two-uri-sans":
        cert, key = hand_made(authority, [TESTER_ID, RESULTS_ID], *valid)
    else:
        raise AssertionError(case)
    return context(folder, authority.bundle_pem, cert, key)


def reason_count(admin: int, case: str) -> int:
    name = REASON[case]
    return listener_stat(admin, name.removeprefix("ssl.")) if name.startswith("ssl.") else counter(admin, name)


@pytest.mark.parametrize("case", CASES)
def test_the_inbound_port_rejects_and_the_app_sees_nothing(example_mesh: MeshRun, tmp_path: Path, case: str) -> None:
    car = sidecar(example_mesh, "stats")
    ctx = bad_client(case, example_mesh, tmp_path)
    app_before, reason_before = counter(car["admin"], APP_REQUESTS), reason_count(car["admin"], case)

    if case == "two-uri-sans":
        # The handshake passes (Envoy accepts a certificate if any URI SAN matches); the SVID
        # rule refuses it before routing.
        status, body = status_and_body(raw_request(car["inbound"], "/stats", ctx=ctx))
        assert status == 403 and body.startswith(DENIED), body
    else:
        refused(car["inbound"], ctx)

    wait_for(lambda: reason_count(car["admin"], case) > reason_before, what=f"{REASON[case]} to grow")
    assert counter(car["admin"], APP_REQUESTS) == app_before


def test_a_valid_mesh_certificate_reaches_the_app(example_mesh: MeshRun, tmp_path: Path) -> None:
    car = sidecar(example_mesh, "stats")
    before = counter(car["admin"], APP_REQUESTS)
    ctx = svid_context(example_mesh, tmp_path, "tester")
    with socket.create_connection(("127.0.0.1", car["inbound"]), timeout=10) as plain:
        with ctx.wrap_socket(plain) as sock:
            assert sock.version() == "TLSv1.3"
            peer = sock.getpeercert()
            assert peer is not None and peer["subjectAltName"] == (("URI", STATS_ID),)  # it proves it is stats
    status, body = status_and_body(raw_request(car["inbound"], "/stats", ctx=ctx))
    assert status == 200 and json.loads(body)["served_by"] == "stats-0"
    assert counter(car["admin"], APP_REQUESTS) == before + 1


def test_certs_lists_every_proxy_with_its_spiffe_id(example_mesh: MeshRun) -> None:
    listed = cli("certs", "--admin", example_mesh.admin)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    status = example_mesh.status()
    expected = {"ingress~ingress": INGRESS_ID}
    for service, spiffe_id in (("results", RESULTS_ID), ("stats", STATS_ID)):
        for replica in status["services"][service]["replicas"]:
            expected[replica["sidecar"]["node"]] = spiffe_id
    assert len(expected) == 4
    for node, spiffe_id in expected.items():
        assert [line for line in lines if line.split()[:2] == [node, spiffe_id]], (node, listed.stdout)
    assert lines[0].startswith(f"CA {example_mesh.authority().fingerprint} (trust domain {TRUST_DOMAIN})")


def test_ca_show_prints_the_root_fingerprint(example_mesh: MeshRun) -> None:
    shown = cli("ca", "show", "--ca-dir", str(example_mesh.run_dir / "ca"))
    assert shown.returncode == 0, shown.stderr
    assert f"fingerprint SHA256 {example_mesh.authority().fingerprint}\n" in shown.stdout
    assert "interstate root CA fec.gov.local" in shown.stdout


# ---- AccessPolicy: a mesh of its own, shared by the read-only checks below --------------------

ACCESS = """\
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: { name: tester }
spec:
  port: 8080
  replicas: 0
  run: { command: [python, -c, "pass"] }
---
apiVersion: mesh.codifyhq.io/v1
kind: AccessPolicy
metadata: { name: stats-callers }
spec:
  destination: { service: stats }
  allow:
    - from: [results]
    - from: [tester]
      pathPrefixes: [/public]
"""


@pytest.fixture(scope="class")
def policy_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshRun]:
    """The example plus a `tester` workload (no replicas) and an AccessPolicy on stats."""
    folder = tmp_path_factory.mktemp("access")
    shutil.copytree(EXAMPLE, folder / "mesh")
    (folder / "mesh" / "access.yaml").write_text(ACCESS)
    with running_mesh(folder / "mesh", folder / "run") as run:
        yield run


def decide(mesh: MeshRun, ctx: ssl.SSLContext, path: str, host: str = "stats:8080") -> str:
    """'denied' (an RBAC 403 with interstate's body, the app untouched) or 'allowed' (the
    request reached the app), checked against the app-request counter too."""
    car = sidecar(mesh, "stats")
    before = counter(car["admin"], APP_REQUESTS)
    status, body = status_and_body(raw_request(car["inbound"], path, host, ctx))
    reached = counter(car["admin"], APP_REQUESTS) - before
    if status == 403 and body.startswith(DENIED):
        assert reached == 0, f"{path}: denied, yet the app got it"
        return "denied"
    assert reached == 1, f"{path}: {status} {body[:200]!r} without reaching the app"
    return "allowed"


# (path sent, host sent, its normalized form, the decision both must get) for identity `tester`,
# which may call only /public on stats.
NORMALIZATION = [
    ("//admin", "stats:8080", "/admin", "denied"),
    ("/public/../admin", "stats:8080", "/admin", "denied"),
    ("/public/%2e%2e/admin", "stats:8080", "/admin", "denied"),
    ("/public/%2E%2E/admin", "stats:8080", "/admin", "denied"),
    ("/public%2F..%2Fadmin", "stats:8080", "/admin", "denied"),
    ("/public%2f..%2fadmin", "stats:8080", "/admin", "denied"),
    ("/public/./../admin", "stats:8080", "/admin", "denied"),
    ("/public/..;/admin", "stats:8080", "/admin", "denied"),
    ("/public\\..\\admin", "stats:8080", "/admin", "denied"),
    ("/%61dmin", "stats:8080", "/admin", "denied"),
    ("http://stats:8080/public/../admin", "stats:8080", "/admin", "denied"),  # absolute form
    ("/admin;x=1", "stats:8080", "/admin", "denied"),
    ("/ADMIN", "stats:8080", "/ADMIN", "denied"),  # another path, not a spelling of /admin
    ("/PUBLIC", "stats:8080", "/PUBLIC", "denied"),  # paths are case-sensitive
    ("/publicx", "stats:8080", "/publicx", "denied"),  # a prefix is a whole segment
    ("/admin", "STATS:8080", "/admin", "denied"),
    ("//public", "stats:8080", "/public", "allowed"),
    ("/admin/../public", "stats:8080", "/public", "allowed"),
    ("/public;x=1", "stats:8080", "/public", "allowed"),
    ("/x/%2e%2e/public", "stats:8080", "/public", "allowed"),
    ("/%70ublic", "stats:8080", "/public", "allowed"),
    ("/public", "STATS:8080", "/public", "allowed"),
]


class TestAccessPolicy:
    def test_results_still_reaches_stats(self, policy_mesh: MeshRun) -> None:
        admin = sidecar(policy_mesh, "stats")["admin"]
        allowed_before = counter(admin, "http.inbound.rbac.access_.allowed")
        response = get(policy_mesh.ingress + "/results")
        assert response.status_code == 200, response.text
        assert response.json()["stats"]["served_by"] == "stats-0"
        # allowed by the policy's rule for results, not for want of a policy
        assert counter(admin, "http.inbound.rbac.access_.allowed") == allowed_before + 1

    @pytest.mark.parametrize("caller", ["tester", "intruder"])
    def test_other_callers_get_a_clear_counted_403(self, policy_mesh: MeshRun, caller: str) -> None:
        car = sidecar(policy_mesh, "stats")
        denied_before = counter(car["admin"], "http.inbound.rbac.access_.denied")
        app_before = counter(car["admin"], APP_REQUESTS)
        with policy_mesh.mesh_client(caller) as client:  # a valid SVID of the mesh CA
            response = client.get(f"https://127.0.0.1:{car['inbound']}/stats")
        assert response.status_code == 403
        assert response.text.startswith(
            f"interstate: access denied: spiffe://{TRUST_DOMAIN}/ns/default/sa/{caller} may not GET /stats on stats"
        ), response.text
        assert counter(car["admin"], "http.inbound.rbac.access_.denied") == denied_before + 1
        assert counter(car["admin"], APP_REQUESTS) == app_before

    def test_a_bootstrap_certificate_is_not_a_workload_identity(self, policy_mesh: MeshRun, tmp_path: Path) -> None:
        # The xDS-only certificate of results-0, as written for its Envoy.
        chain_file, key_file = policy_mesh.bootstrap_files("sidecar~results-0")
        chain, key = chain_file.read_text(), key_file.read_text()
        ctx = context(tmp_path, policy_mesh.authority().bundle_pem, chain, key)
        car = sidecar(policy_mesh, "stats")
        before = counter(car["admin"], APP_REQUESTS)
        try:
            raw = raw_request(car["inbound"], "/stats", ctx=ctx)
        except (ssl.SSLError, ConnectionError):
            raw = b""  # refused at the handshake: fine
        assert counter(car["admin"], APP_REQUESTS) == before, f"stats' app served it as results: {raw[:80]!r}"

    @pytest.mark.parametrize(("path", "host", "normal", "expected"), NORMALIZATION)
    def test_a_path_variant_gets_the_decision_of_its_normal_form(
        self, policy_mesh: MeshRun, tmp_path: Path, path: str, host: str, normal: str, expected: str
    ) -> None:
        ctx = svid_context(policy_mesh, tmp_path, "tester")
        assert decide(policy_mesh, ctx, normal) == expected
        assert decide(policy_mesh, ctx, path, host) == expected


# ---- PERMISSIVE: a mesh of its own ----------------------------------------------------------


def test_permissive_accepts_plaintext_and_says_so(tmp_path: Path, mesh_copy: Path) -> None:
    stats_file = mesh_copy / "stats.yaml"
    text = stats_file.read_text()
    assert "  replicas: 1\n" in text
    stats_file.write_text(text.replace("  replicas: 1\n", "  replicas: 1\n  mtls: { mode: PERMISSIVE }\n"))
    with running_mesh(mesh_copy, tmp_path / "run") as mesh:
        car = sidecar(mesh, "stats")
        status, body = status_and_body(raw_request(car["inbound"], "/stats"))
        assert status == 200 and json.loads(body)["served_by"] == "stats-0"

        ctx = svid_context(mesh, tmp_path, "tester")
        status, body = status_and_body(raw_request(car["inbound"], "/stats", ctx=ctx))
        assert status == 200 and json.loads(body)["served_by"] == "stats-0"
        assert get(mesh.ingress + "/results").status_code == 200

        # results stays STRICT: plaintext to its side-car is still refused
        refused(sidecar(mesh, "results")["inbound"], None)

        shown = cli("status", "--admin", mesh.admin)
        assert shown.returncode == 0, shown.stderr
        lines = {line.split(":")[0]: line for line in shown.stdout.splitlines() if not line.startswith(" ")}
        assert lines["stats"].endswith("mTLS PERMISSIVE (plaintext accepted!)"), shown.stdout
        assert lines["results"].endswith("mTLS STRICT"), shown.stdout
