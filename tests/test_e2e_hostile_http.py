"""End-to-end: hostile HTTP against the ingress (and a side-car's inbound listener), stopped by
Envoy's own limits (compile/limits.py; README "Limits at the edge").

One mesh for the module: a relay app `front` (tests/apps/relay_app.py, records every request's
headers) behind a catch-all Gateway route, an AccessPolicy (only the ingress may call front, and
only /public and /results) and a TokenPolicy (/results needs a token with role `newsroom`).
Clients speak raw bytes to 127.0.0.1 — HTTP/1.1 over a socket, HTTP/2 as frames (h2c with prior
knowledge, HPACK literals) — so nothing is fixed or normalized on the client side. "Nothing
reached the app" is read from front's side-car (`cluster.inbound|front.upstream_rq_total`);
which limit fired, from the Envoys' own counters (their admin ports are in the run folder's
Envoy bootstraps). Every test is bounded in requests and seconds; none asserts a speed. The slow
clients (10-30 s timeouts) start with the mesh and are checked by the last test, so their
waiting overlaps the other tests.
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwt_tokens import Signer
from mesh_runner import EXAMPLE, ROOT, MeshRun, envoy_admin, envoy_stats, running_mesh

from interstate.ca.authority import utcnow
from interstate.ca.spiffe import workload_id
from interstate.compile import limits

pytestmark = pytest.mark.e2e

APPS = ROOT / "tests" / "apps"
ISSUER, AUDIENCE = "https://auth.fec.gov", "results-api"
DENIED = b"interstate: access denied"
APP_REQUESTS = "cluster.inbound|front.upstream_rq_total"  # requests front's side-car sent its app
KIB, MIB = 1024, 1024 * 1024

MESH = """\
apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: {{ name: hostile }}
spec:
  trustDomain: fec.gov.local
  defaultPolicy: FEC-F101
  allowedHeaders: ["*"]
---
apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata: {{ name: public }}
spec:
  routes: [{{ pathPrefix: /, service: front }}]
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {{ name: front }}
spec:
  port: 8080
  run:
    workingDir: {apps}
    command: [python, -m, uvicorn, relay_app:app, --host, 127.0.0.1, --port, $(PORT), --no-access-log]
  readinessProbe: {{ httpGet: {{ path: /healthz }} }}
---
apiVersion: mesh.codifyhq.io/v1
kind: AccessPolicy
metadata: {{ name: front-callers }}
spec:
  destination: {{ service: front }}
  allow:
    - from: [ingress]
      pathPrefixes: [/public, /results]
---
apiVersion: mesh.codifyhq.io/v1
kind: TokenPolicy
metadata: {{ name: newsroom-tokens }}
spec:
  issuers:
    - issuer: {issuer}
      audiences: [{audience}]
      jwks: {{ file: keys/jwks.json }}
  roleClaim: roles
  require:
    - {{ pathPrefix: /results, roles: [newsroom] }}
"""


# ---- the mesh and where its parts listen ----------------------------------------------------


def admin_socket(run: MeshRun, stem: str) -> str:
    """An Envoy's admin socket, from the bootstrap the mesh wrote for it (not the admin API)."""
    config = json.loads((run.run_dir / "envoy" / f"{stem}.json").read_text())
    return str(config["admin"]["address"]["pipe"]["path"])


def admin_json(admin: str, path: str) -> Any:
    return envoy_admin(admin, path, format="json").json()


@dataclass
class Hostile:
    run: MeshRun
    signer: Signer
    ingress: int = 0  # port of the ingress listener
    ingress_admin: str = ""
    sidecar_admin: str = ""  # front-0's side-car
    inbound: int = 0  # front-0's inbound listener (mutual TLS)
    app: int = 0  # front-0's app itself

    def stat(self, name: str, admin: str | None = None) -> int:
        """One counter by exact name (the ingress's unless `admin` says otherwise); 0 when unset."""
        port = self.ingress_admin if admin is None else admin
        return envoy_stats(port, f"^{re.escape(name)}$").get(name, 0)

    def app_requests(self) -> int:
        return self.stat(APP_REQUESTS, self.sidecar_admin)

    def app_seen(self) -> list[list[list[str]]]:
        """Headers of every request the app received, oldest first."""
        return list(httpx.get(f"http://127.0.0.1:{self.app}/seen", timeout=5, trust_env=False).json())

    def token(self, *roles: str) -> str:
        return self.signer.token(iss=ISSUER, aud=AUDIENCE, roles=list(roles))

    def svid_context(self, folder: Path, service: str = "tester") -> ssl.SSLContext:
        """A client TLS context with a fresh X.509-SVID of `service` from the mesh's CA."""
        authority = self.run.authority()
        issued = authority.issue(workload_id("fec.gov.local", service), timedelta(hours=1), utcnow())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cadata=authority.bundle_pem)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".pem", delete=False) as chain:
            chain.write(issued.chain_pem + issued.key_pem)
        context.load_cert_chain(chain.name)
        return context


@contextmanager
def app_untouched(mesh: Hostile) -> Iterator[None]:
    before = mesh.app_requests()
    yield
    assert mesh.app_requests() == before, "the app received a request it must never see"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "mesh"
    (folder / "keys").mkdir(parents=True)
    signer = Signer()
    (folder / "keys" / "jwks.json").write_text(signer.jwks())
    (folder / "mesh.yaml").write_text(MESH.format(apps=APPS, issuer=ISSUER, audience=AUDIENCE))
    with running_mesh(folder, root / "run") as run:
        out = Hostile(run, signer, ingress=int(run.ingress.rsplit(":", 1)[1]))
        out.ingress_admin = admin_socket(run, "ingress-ingress")
        out.sidecar_admin = admin_socket(run, "sidecar-front-0")
        listeners = admin_json(out.sidecar_admin, "/listeners")["listener_statuses"]
        [inbound] = [x for x in listeners if x["name"] == "inbound"]
        out.inbound = int(inbound["local_address"]["socket_address"]["port_value"])
        clusters = admin_json(out.sidecar_admin, "/clusters")["cluster_statuses"]
        [app] = [c["host_statuses"][0] for c in clusters if c["name"] == "inbound|front"]
        out.app = int(app["address"]["socket_address"]["port_value"])
        yield out


# ---- HTTP/1.1 as bytes ------------------------------------------------------------------------


def request(path: str = "/public/x", headers: bytes = b"", method: str = "GET", body: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: results.fec.gov\r\n".encode() + headers + b"\r\n" + body


def exchange(port: int, data: bytes, ctx: ssl.SSLContext | None = None, timeout: float = 10) -> bytes:
    """Send `data`; read one response up to its content-length, or until the connection ends.
    (Envoy keeps a connection open a second after a reply of its own, for the client to close.)"""
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain:
        with ctx.wrap_socket(plain) if ctx is not None else plain as sock:
            try:
                sock.sendall(data)
                while chunk := sock.recv(65536):
                    raw += chunk
                    head, sep, rest = raw.partition(b"\r\n\r\n")
                    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                    if sep and length and len(rest) >= int(length.group(1)):
                        break
            except ConnectionError:
                pass  # a reset after the reply (Envoy stops reading what it refused): keep what came
    return raw


def status(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert match, f"not an HTTP response: {raw[:200]!r}"
    return int(match.group(1))


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


def header_of(raw: bytes, name: str) -> str | None:
    match = re.search(rb"(?im)^" + name.encode() + rb":\s*(.*?)\s*$", raw.partition(b"\r\n\r\n")[0])
    return match.group(1).decode() if match else None


# ---- HTTP/2 as frames -------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 0x3, 0x4
CANCEL = 0x8


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes([*out, value])


def literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def request_block(method: bytes, path: bytes = b"/public/x", extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    pseudo = ((b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", b"results.fec.gov"))
    return b"".join(literal(n, v) for n, v in (*pseudo, *extra))


Frame = tuple[int, int, int, bytes]  # type, flags, stream, payload


class H2:
    """One h2c connection: preface and SETTINGS sent, the server's SETTINGS read and acked.
    Flow-control updates and settings acknowledgements are read and dropped."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.frames: list[Frame] = []
        self.closed = False
        self.settings: dict[int, int] = {}
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        while not self.settings:
            got = self.read()
            assert got is not None, "the ingress closed an HTTP/2 connection at its preface"
            kind, flags, _, payload = got
            if kind == SETTINGS and not flags & ACK:
                self.settings = {
                    int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
                    for i in range(0, len(payload), 6)
                }
                self.sock.sendall(frame(SETTINGS, ACK, 0))

    def _receive(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionError:
            chunk = b""
        self.closed = not chunk
        self.buffer += chunk
        while len(self.buffer) >= 9 and len(self.buffer) >= 9 + int.from_bytes(self.buffer[:3], "big"):
            length = int.from_bytes(self.buffer[:3], "big")
            head, payload = self.buffer[:9], self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            kind, flags = head[3], head[4]
            if kind != WINDOW_UPDATE and not (kind == SETTINGS and flags & ACK):
                self.frames.append((kind, flags, int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload))

    def read(self) -> Frame | None:
        """The next frame; None once the connection is closed."""
        while not self.frames and not self.closed:
            self._receive()
        return self.frames.pop(0) if self.frames else None

    def pending(self, wait: float) -> bool:
        """Whether a frame (or the end of the connection) arrived within `wait` s."""
        if not self.frames and not self.closed and select.select([self.sock], [], [], wait)[0]:
            self._receive()
        return bool(self.frames) or self.closed

    def frames_until_closed(self, limit: int = 100_000) -> list[tuple[int, int]]:
        """(type, stream) of every frame until the connection closes (a timeout fails)."""
        out = []
        while (got := self.read()) is not None:
            out.append((got[0], got[2]))
            assert len(out) < limit, "the connection was not closed"
        return out

    def send(self, data: bytes) -> bool:
        """False when the connection is gone already."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def still_open(self, wait: float) -> bool:
        """Whether the connection is open after reading whatever arrives within `wait` s."""
        while self.pending(wait):
            if self.read() is None:
                return False
        return True

    def close(self) -> None:
        self.sock.close()


@contextmanager
def h2(port: int) -> Iterator[H2]:
    conn = H2(port)
    try:
        yield conn
    finally:
        conn.close()


# ---- slow clients: started with the mesh, checked by the last test ----------------------------


@dataclass
class Slow:
    """A client that sends `first`, then `trickle` every `every` s; what it got, and when the
    connection ended (None: still open when the test gave up)."""

    name: str
    port: int
    first: bytes
    trickle: bytes = b""
    every: float = 2.0
    ctx: ssl.SSLContext | None = None
    got: bytes = b""
    ended_after: float | None = None
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, give_up: float) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=give_up) as plain:
                with self.ctx.wrap_socket(plain) if self.ctx is not None else plain as sock:
                    start = time.monotonic()
                    sock.sendall(self.first)
                    sock.settimeout(self.every if self.trickle else give_up)
                    while time.monotonic() - start < give_up:
                        try:
                            chunk = sock.recv(65536)
                        except TimeoutError:
                            try:
                                sock.sendall(self.trickle)  # still waiting: one more header line
                                continue
                            except OSError:
                                chunk = b""
                        except ConnectionError:
                            chunk = b""
                        if not chunk:
                            self.ended_after = time.monotonic() - start
                            break
                        self.got += chunk
        except OSError as exc:
            self.error = repr(exc)
        finally:
            self.done.set()


SLOW_GIVE_UP_S = limits.CONNECTION_IDLE_TIMEOUT.total_seconds() + 20


@dataclass
class SlowClients:
    clients: dict[str, Slow]
    before: dict[str, int]  # the timeout counters when they started


@pytest.fixture(scope="module", autouse=True)
def slow_clients(mesh: Hostile, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowClients]:
    counters = ("downstream_cx_idle_timeout", "downstream_rq_header_timeout", "downstream_rq_idle_timeout")
    before = {name: mesh.stat(f"http.ingress.{name}") for name in counters}
    before["inbound"] = mesh.stat("http.inbound.downstream_rq_header_timeout", mesh.sidecar_admin)
    post = request("/public/x", b"Content-Length: 100\r\n", method="POST")
    clients = [
        Slow("silent", mesh.ingress, b""),  # connects, never sends a byte
        Slow("slow headers", mesh.ingress, request().removesuffix(b"\r\n"), trickle=b"x-slow: 1\r\n"),
        Slow("stalled body", mesh.ingress, post + b"0123456789"),  # 10 of 100 bytes, then nothing
        Slow(
            "slow headers inbound",
            mesh.inbound,
            request().removesuffix(b"\r\n"),
            trickle=b"x-slow: 1\r\n",
            ctx=mesh.svid_context(tmp_path_factory.mktemp("slow")),
        ),
    ]
    threads = [threading.Thread(target=c.run, args=(SLOW_GIVE_UP_S,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    yield SlowClients({c.name: c for c in clients}, before)
    for thread in threads:
        thread.join(timeout=SLOW_GIVE_UP_S + 5)


# ---- headers: size, count, bytes that do not belong in them ----------------------------------


def test_a_request_within_the_header_limits_reaches_the_app(mesh: Hostile) -> None:
    headers = b"x-big: " + b"a" * (24 * KIB) + b"\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(48))
    before = mesh.app_requests()
    raw = exchange(mesh.ingress, request(headers=headers))
    assert status(raw) == 200, raw[:300]
    assert mesh.app_requests() == before + 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"x-big: " + b"a" * (limits.MAX_REQUEST_HEADERS_KB * KIB) + b"\r\n", id="one 32 KiB header"),
        pytest.param(b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 1024) for i in range(40)), id="40 headers of 1 KiB"),
        pytest.param(b"".join(b"x-h%d: 1\r\n" % i for i in range(limits.MAX_HEADERS_COUNT)), id="64 headers"),
    ],
)
def test_too_much_header_gets_431_and_never_reaches_the_app(mesh: Hostile, headers: bytes) -> None:
    with app_untouched(mesh):
        raw = exchange(mesh.ingress, request(headers=headers))
    assert status(raw) == 431, raw[:300]
    assert body_of(raw) == b"Request Header Fields Too Large"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"x-a: a\x00b\r\n", id="NUL"),
        pytest.param(b"x-a: a\x01b\r\n", id="control character"),
        pytest.param(b"x-a: a\x7fb\r\n", id="DEL"),
        pytest.param(b"x-a : a\r\n", id="space before the colon"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", id="chunked and a length (smuggling)"),
    ],
)
def test_bytes_that_do_not_belong_in_a_header_get_400(mesh: Hostile, headers: bytes) -> None:
    with app_untouched(mesh):
        raw = exchange(mesh.ingress, request(headers=headers, method="POST"))
    assert status(raw) == 400, raw[:300]


def test_a_bare_cr_or_lf_in_a_value_cannot_smuggle_a_header_to_the_app(mesh: Hostile) -> None:
    # A bare CR does not end a header line: it is dropped and the rest stays in the same value.
    # A bare LF does end one (RFC 9112 lets a recipient accept it): the client sent two headers,
    # and the app gets exactly those two, each clean. Envoy writes every header anew upstream,
    # so the app never sees a CR or LF inside a value, whatever its own parser would do with it.
    seen = len(mesh.app_seen())
    for line in (b"x-a: a\rx-injected-cr: yes\r\n", b"x-b: b\nx-c: c\r\n", b"x-d: d\r\n folded\r\n"):
        assert status(exchange(mesh.ingress, request(headers=line))) == 200
    cr, lf, fold = (dict(headers) for headers in mesh.app_seen()[seen:])
    assert "x-injected-cr" not in cr and cr["x-a"] == "ax-injected-cr: yes"
    assert (lf["x-b"], lf["x-c"]) == ("b", "c")
    assert fold["x-d"] == "d folded"  # an obsolete folded line, unfolded
    assert not any("\r" in v or "\n" in v or "\0" in v for h in (cr, lf, fold) for v in h.values())


@pytest.mark.parametrize(
    "value", [b"a\r\nx-injected: yes", b"a\nb", b"a\rb", b"a\x00b"], ids=["CRLF", "LF", "CR", "NUL"]
)
def test_http2_header_values_with_cr_lf_or_nul_close_the_connection(mesh: Hostile, value: bytes) -> None:
    errors = mesh.stat("http2.rx_messaging_error")
    with app_untouched(mesh), h2(mesh.ingress) as conn:
        conn.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block(b"GET", extra=((b"x-a", value),))))
        frames = conn.frames_until_closed()
    assert HEADERS not in [kind for kind, _ in frames]  # no response at all: the connection is closed
    assert mesh.stat("http2.rx_messaging_error") == errors + 1


# ---- bodies -------------------------------------------------------------------------------------


def send_body(port: int, head: bytes, body_size: int, chunked: bool = False) -> tuple[bytes, int]:
    """POST a body of `body_size` bytes in 16 KiB pieces, stopping as soon as a response comes
    (or the connection ends); returns (response, bytes of body sent)."""
    piece, sent, raw = b"x" * (16 * KIB), 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
            while sent < body_size and not select.select([sock], [], [], 0)[0]:
                n = min(len(piece), body_size - sent)
                sock.sendall(b"%x\r\n%s\r\n" % (n, piece[:n]) if chunked else piece[:n])
                sent += n
            if chunked and sent == body_size:
                sock.sendall(b"0\r\n\r\n")
        except ConnectionError:
            pass  # refused while sending: the answer is read below
        try:
            while chunk := sock.recv(65536):
                raw += chunk
                length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", raw)
                if length and len(body_of(raw)) >= int(length.group(1)):
                    break
        except ConnectionError:
            pass
    return raw, sent


def test_a_body_of_exactly_the_limit_reaches_the_app(mesh: Hostile) -> None:
    size = limits.MAX_REQUEST_BODY_BYTES
    before = mesh.app_requests()
    raw, sent = send_body(mesh.ingress, request(headers=b"Content-Length: %d\r\n" % size, method="POST"), size)
    assert sent == size and status(raw) == 405  # the relay app takes GET only: it answered
    assert mesh.app_requests() == before + 1


@pytest.mark.parametrize(
    ("size", "chunked"),
    [(limits.MAX_REQUEST_BODY_BYTES + 1, False), (8 * MIB, False), (8 * MIB, True)],
    ids=["one byte over", "8 MiB", "8 MiB chunked"],
)
def test_a_body_over_the_limit_gets_413_before_it_is_all_sent(mesh: Hostile, size: int, chunked: bool) -> None:
    length = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % size
    with app_untouched(mesh):
        raw, sent = send_body(mesh.ingress, request(headers=length, method="POST"), size, chunked)
    assert status(raw) == 413 and body_of(raw) == b"Payload Too Large", raw[:300]
    if size > 2 * limits.MAX_REQUEST_BODY_BYTES:
        assert sent < size  # refused while the client was still sending, not after reading it all


# ---- HTTP/2 floods --------------------------------------------------------------------------------


def test_http2_clients_are_told_the_stream_and_window_limits_and_held_to_them(mesh: Hostile) -> None:
    errors = mesh.stat("http.ingress.downstream_cx_protocol_error")
    with app_untouched(mesh), h2(mesh.ingress) as conn:
        assert conn.settings[SETTINGS_MAX_CONCURRENT_STREAMS] == limits.H2_MAX_CONCURRENT_STREAMS
        assert conn.settings[SETTINGS_INITIAL_WINDOW_SIZE] == limits.H2_INITIAL_STREAM_WINDOW_BYTES
        # as many streams as allowed, each a POST whose body never comes (the body limit holds it)
        for i in range(limits.H2_MAX_CONCURRENT_STREAMS):
            conn.send(frame(HEADERS, END_HEADERS, 2 * i + 1, request_block(b"POST")))
        assert conn.still_open(0.5)
        conn.send(frame(HEADERS, END_HEADERS, 2 * limits.H2_MAX_CONCURRENT_STREAMS + 1, request_block(b"POST")))
        conn.frames_until_closed()  # one more: the connection is closed
    assert mesh.stat("http.ingress.downstream_cx_protocol_error") == errors + 1


def test_http2_rapid_reset_closes_the_connection(mesh: Hostile) -> None:
    # CVE-2023-44487: open a stream, cancel it at once, again and again.
    resets, closed = mesh.stat("http2.rx_reset"), mesh.stat("http.ingress.downstream_rq_too_many_premature_resets")
    pairs = 0
    with app_untouched(mesh), h2(mesh.ingress) as conn:
        cancel = CANCEL.to_bytes(4, "big")
        while pairs < 2 * limits.PREMATURE_RESET_TOTAL_STREAM_COUNT:  # bounded whatever happens
            stream = 2 * pairs + 1
            if not conn.send(
                frame(HEADERS, END_HEADERS, stream, request_block(b"POST")) + frame(RST_STREAM, 0, stream, cancel)
            ):
                break
            pairs += 1
        conn.frames_until_closed()
    assert mesh.stat("http.ingress.downstream_rq_too_many_premature_resets") == closed + 1
    # closed at the reset that made half of PREMATURE_RESET_TOTAL_STREAM_COUNT premature
    assert mesh.stat("http2.rx_reset") - resets == limits.PREMATURE_RESET_TOTAL_STREAM_COUNT // 2


def continuation(number: int) -> bytes:
    """A CONTINUATION frame of stream 1 with one header of about 1 KiB (Envoy counts 1,008 bytes)."""
    return frame(CONTINUATION, 0, 1, literal(b"x-f%05d" % number, b"v" * 1000))


def test_http2_continuation_flood_is_cut_at_the_header_limit_then_closed(mesh: Hostile) -> None:
    # CVE-2024-27919/-30255: a header block that never ends, one CONTINUATION frame after another.
    too_large = mesh.stat("http2.header_list_size_too_large")
    errors = mesh.stat("http.ingress.downstream_cx_protocol_error")
    read_before = mesh.stat("http.ingress.downstream_cx_rx_bytes_total")
    below = limits.MAX_REQUEST_HEADERS_KB - 2  # frames of ~1 KiB: the block stays under the limit
    flood = 8 * 1024  # frames: 8 MiB
    with app_untouched(mesh), h2(mesh.ingress) as conn:
        conn.send(frame(HEADERS, 0, 1, request_block(b"POST")) + b"".join(continuation(i) for i in range(below)))
        assert not conn.pending(0.5)  # under the limit: Envoy waits for the rest of the block
        conn.send(continuation(below) + continuation(below + 1) + continuation(below + 2))  # and over it
        got = conn.read()
        assert got is not None and (got[0], got[2]) == (RST_STREAM, 1), got
        # the client goes on: the connection is closed before it can push the whole flood
        sent = below + 3
        while sent < flood and conn.send(continuation(sent)):
            sent += 1
        conn.frames_until_closed()
    assert mesh.stat("http2.header_list_size_too_large") == too_large + 1
    assert mesh.stat("http.ingress.downstream_cx_protocol_error") == errors + 1
    assert mesh.stat("http.ingress.downstream_cx_rx_bytes_total") - read_before < flood * KIB // 4


def test_http2_empty_frame_flood_closes_the_connection(mesh: Hostile) -> None:
    floods = mesh.stat("http2.inbound_empty_frames_flood")
    with app_untouched(mesh), h2(mesh.ingress) as conn:
        conn.send(frame(HEADERS, 0, 1, request_block(b"POST")))
        for _ in range(10_000):
            if not conn.send(frame(CONTINUATION, 0, 1)):
                break
        conn.frames_until_closed()
    assert mesh.stat("http2.inbound_empty_frames_flood") == floods + 1


def test_http2_ping_flood_from_a_client_that_does_not_read_closes_the_connection(mesh: Hostile) -> None:
    floods = mesh.stat("http2.outbound_control_flood")
    with h2(mesh.ingress) as conn:
        # each PING asks for an ACK; the client reads none, so they pile up in Envoy
        # (far more than the kernel's socket buffers hold, so Envoy's own queue must grow)
        pings = [frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(100 * limits.H2_MAX_OUTBOUND_CONTROL_FRAMES)]
        conn.send(b"".join(pings))
        conn.frames_until_closed()
    assert mesh.stat("http2.outbound_control_flood") == floods + 1


# ---- paths: every spelling of a policed path is policed, or refused ------------------------------

TOKEN, DENY, APP = "401 token", "403 access policy", "200 app"
# (path sent as is, what the ingress answers, and for a 307 where it sends the client)
PATHS = [
    # TokenPolicy: /results needs a token
    ("/results", TOKEN, None),
    ("//results", TOKEN, None),
    ("/admin/../results", TOKEN, None),
    ("/x/./../results", TOKEN, None),
    ("/%2e%2e/results", TOKEN, None),
    ("/%72esults", TOKEN, None),
    ("/res%75lts/x", TOKEN, None),
    ("/RESULTS", TOKEN, None),
    ("/Results/x", TOKEN, None),
    ("/results;x=1", TOKEN, None),
    ("/results/.", TOKEN, None),
    ("/results/x/..", TOKEN, None),
    ("/x\\..\\results", TOKEN, None),
    ("/results?next=/../admin", TOKEN, None),
    ("/x%2F..%2Fresults", 307, "/results"),
    ("/x%5c..%5cresults", 307, "/results"),
    ("/%2Fresults", 307, "/results"),
    ("/results%2F..", 307, "/"),
    # AccessPolicy: front takes only /public and /results from the ingress
    ("/admin", DENY, None),
    ("//admin", DENY, None),
    ("/public/../admin", DENY, None),
    ("/public/%2e%2e/admin", DENY, None),
    ("/%61dmin", DENY, None),
    ("/ADMIN", DENY, None),  # another path; an allow-list refuses what it does not name
    ("/publicx", DENY, None),
    ("/public\\..\\admin", DENY, None),
    ("/results/..", DENY, None),  # that is "/"
    ("/public%2F..%2Fadmin", 307, "/admin"),
    ("/public/..%2fadmin", 307, "/admin"),
    # refused outright
    ("/results#x", 400, None),
    ("/results%00", 400, None),
    ("\\results", 400, None),
    ("results", 400, None),
    # and what is allowed stays allowed in every spelling
    ("/public/x", APP, None),
    ("//public/./x", APP, None),
    ("/admin/../public", APP, None),
    ("/%70ublic", APP, None),
]


def answer(mesh: Hostile, path: str, token: str | None = None) -> tuple[str | int, bytes]:
    """What the ingress does with `GET <path>` exactly as written, checked against the app."""
    auth = f"authorization: Bearer {token}\r\n".encode() if token else b""
    before = mesh.app_requests()
    raw = exchange(mesh.ingress, request(path, auth + b"Connection: close\r\n"))
    reached = mesh.app_requests() - before
    code, body = status(raw), body_of(raw)
    if code == 200:
        assert reached == 1, f"{path}: 200 without the app"
        return APP, raw
    assert reached == 0, f"{path}: {code} {body[:100]!r}, yet the app got it"
    if code == 401:
        assert body == b"Jwt is missing", body
        return TOKEN, raw
    if code == 403 and body.startswith(DENIED):
        return DENY, raw
    return code, raw


@pytest.mark.parametrize(("path", "expected", "location"), PATHS)
def test_a_path_variant_is_policed_as_its_plain_form_or_refused(
    mesh: Hostile, path: str, expected: str | int, location: str | None
) -> None:
    got, raw = answer(mesh, path)
    assert got == expected, f"{path}: {raw[:300]!r}"
    if expected == 307:
        # an escaped slash is never forwarded: the client is sent to the plain path, policed there
        assert location is not None and header_of(raw, "location") == location
        plain = next(e for p, e, _ in PATHS if p == location) if location != "/" else DENY
        assert answer(mesh, location)[0] == plain


@pytest.mark.parametrize("path", ["/RESULTS", "/results;x=1", "/Results/x", "/x/../results"])
def test_a_token_without_the_role_is_refused_in_every_spelling(mesh: Hostile, path: str) -> None:
    with app_untouched(mesh):
        raw = exchange(mesh.ingress, request(path, f"authorization: Bearer {mesh.token('public')}\r\n".encode()))
    assert status(raw) == 403 and body_of(raw).startswith(DENIED), raw[:300]


def test_a_token_with_the_role_reaches_the_app_on_the_normalized_path(mesh: Hostile) -> None:
    assert answer(mesh, "/admin/../results//x", mesh.token("newsroom"))[0] == APP


# ---- a side-car's inbound listener (mutual TLS) ---------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"x-big: " + b"a" * (limits.INBOUND_MAX_REQUEST_HEADERS_KB * KIB) + b"\r\n", id="60 KiB"),
        pytest.param(b"".join(b"x-h%d: 1\r\n" % i for i in range(limits.INBOUND_MAX_HEADERS_COUNT)), id="100 headers"),
    ],
)
def test_a_sidecar_answers_431_past_its_header_limits(mesh: Hostile, tmp_path: Path, headers: bytes) -> None:
    with app_untouched(mesh):
        raw = exchange(mesh.inbound, request(headers=headers), ctx=mesh.svid_context(tmp_path))
    assert status(raw) == 431, raw[:300]


# ---- slow clients (started with the mesh by `slow_clients`); keep this test last -----------------


def test_slow_clients_are_cut_off_by_the_timeouts(mesh: Hostile, slow_clients: SlowClients) -> None:
    clients, before = slow_clients.clients, slow_clients.before
    for client in clients.values():
        assert client.done.wait(SLOW_GIVE_UP_S + 5), f"{client.name}: still running"
        assert not client.error, f"{client.name}: {client.error}"
        assert client.ended_after is not None, f"{client.name}: not closed within {SLOW_GIVE_UP_S} s"

    # headers that never end: 408 once REQUEST_HEADERS_TIMEOUT passed since their first byte
    for name in ("slow headers", "slow headers inbound"):
        raw = clients[name].got
        assert status(raw) == 408 and body_of(raw) == b"request header timeout", (name, raw[:300])
    assert mesh.stat("http.ingress.downstream_rq_header_timeout") == before["downstream_rq_header_timeout"] + 1
    inbound = mesh.stat("http.inbound.downstream_rq_header_timeout", mesh.sidecar_admin)
    assert inbound == before["inbound"] + 1
    # a body that stops coming: 408 once nothing moved for STREAM_IDLE_TIMEOUT
    raw = clients["stalled body"].got
    assert status(raw) == 408 and body_of(raw) == b"stream timeout", raw[:300]
    assert mesh.stat("http.ingress.downstream_rq_idle_timeout") == before["downstream_rq_idle_timeout"] + 1
    # a connection without a request: closed, without a word, after CONNECTION_IDLE_TIMEOUT
    assert clients["silent"].got == b""
    assert mesh.stat("http.ingress.downstream_cx_idle_timeout") >= before["downstream_cx_idle_timeout"] + 1


# ---- connections at once: Envoy's overload manager at the ingress -----------------------------


def test_past_the_connection_limit_a_new_client_is_closed_and_those_in_are_served(tmp_path: Path) -> None:
    """`--max-ingress-connections 5`: five idle clients hold their connections; a sixth is closed
    as soon as it is accepted; the five are still served, and once one leaves a new one is."""
    with running_mesh(EXAMPLE, tmp_path / "run", "--max-ingress-connections", "5") as run:
        host, port = run.ingress.removeprefix("http://").rsplit(":", 1)
        address = (host, int(port))
        held = [socket.create_connection(address, timeout=5) for _ in range(5)]
        try:
            time.sleep(0.5)  # Envoy has accepted all five
            with socket.create_connection(address, timeout=5) as extra:
                extra.sendall(b"GET /results HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    answer = extra.recv(1024)
                except ConnectionResetError:
                    answer = b""
                assert answer == b""  # closed, not answered
            for client in held:
                client.sendall(b"GET /results HTTP/1.1\r\nHost: x\r\n\r\n")
                assert client.recv(1024).startswith(b"HTTP/1.1 200"), "a held connection is served"
            overflow = envoy_stats(run.status()["ingress"]["admin"], "global_cx_overflow")
            assert sum(overflow.values()) >= 1, overflow
        finally:
            held.pop().close()
        time.sleep(0.5)
        try:
            assert httpx.get(run.ingress + "/results", trust_env=False, timeout=10).status_code == 200
        finally:
            for client in held:
                client.close()
