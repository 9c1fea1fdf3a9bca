"""Test helper: run `interstate up` as a real subprocess on free ports, and stop it for sure.

`MeshRun.stop()` sends SIGTERM and then checks that every process the mesh started is gone;
teardown kills whatever survived, so a failing test never leaves Envoys behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from interstate.ca.authority import Authority, utcnow
from interstate.ca.spiffe import workload_id

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "election-night"
INTERSTATE = [sys.executable, "-m", "interstate.cli"]
READY = re.compile(r"mesh ready ingress=(\S+) admin=(\S+) dashboard=(\S+)")


def wait_for(predicate: Callable[[], T | None], timeout: float = 20, what: str = "condition", every: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


TOKEN_FILES: dict[str, Path] = {}  # a running mesh's admin URL -> its admin token file


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`interstate ARGS`; a command given `--admin URL` of a mesh started here gets its token file."""
    env = dict(os.environ)
    if "--admin" in args and (token_file := TOKEN_FILES.get(args[args.index("--admin") + 1])) is not None:
        env["INTERSTATE_ADMIN_TOKEN_FILE"] = str(token_file)
    return subprocess.run([*INTERSTATE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@dataclass
class MeshRun:
    proc: subprocess.Popen[str]
    run_dir: Path
    ingress: str = ""
    admin: str = ""
    dashboard_link: str = ""  # the one-time sign-in link of the ready line
    output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                match = READY.search(line)
                if match:
                    self.ingress, self.admin, self.dashboard_link = match.group(1), match.group(2), match.group(3)
                    TOKEN_FILES[self.admin] = self.token_file
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("mesh did not become ready:\n" + "".join(self.output))

    def authority(self) -> Authority:
        """The mesh's own CA (tests mint client certificates with it)."""
        return Authority.from_files(self.run_dir / "ca" / "ca.pem", self.run_dir / "ca" / "ca.key")

    def mesh_client(self, service: str = "tester", trust_domain: str = "fec.gov.local") -> httpx.Client:
        """An HTTPS client presenting a fresh X.509-SVID of `service`, like a side-car would."""
        authority = self.authority()
        issued = authority.issue(workload_id(trust_domain, service), timedelta(hours=1), utcnow())
        return tls_client(self.run_dir, issued.chain_pem, issued.key_pem, authority.bundle_pem)

    def bootstrap_files(self, node: str) -> tuple[Path, Path]:
        """The bootstrap (xDS client) certificate and key files of `node`, as its SDS file names
        them now (they carry the certificate's serial and change at each renewal)."""
        sds = json.loads((self.run_dir / "certs" / f"{node.replace('~', '-')}.xds-client.json").read_text())
        files = sds["resources"][0]["tls_certificate"]
        return Path(files["certificate_chain"]["filename"]), Path(files["private_key"]["filename"])

    @property
    def token_file(self) -> Path:
        return self.run_dir / "admin.token"

    @property
    def headers(self) -> dict[str, str]:
        """The admin API's credential, as the CLI sends it."""
        return {"authorization": "Bearer " + self.token_file.read_text().strip()}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the admin API with the mesh's admin token (and any `headers` given)."""
        kwargs.setdefault("timeout", 10)
        headers = self.headers | kwargs.pop("headers", {})
        return httpx.request(method, self.admin + path, headers=headers, trust_env=False, **kwargs)

    def status(self) -> dict[str, Any]:
        """`GET /status`; httpx.HTTPStatusError while the control plane is away (503)."""
        return dict(self.api("GET", "/status").raise_for_status().json())

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@contextmanager
def running_mesh(path: Path, run_dir: Path, *extra: str) -> Iterator[MeshRun]:
    proc = subprocess.Popen(
        [
            *INTERSTATE,
            "up",
            str(path),
            "--auto-ports",
            "--run-dir",
            str(run_dir),
            "--ca-dir",
            str(run_dir / "ca"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
    )
    run = MeshRun(proc, run_dir)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.output.append(line)

    run._reader = threading.Thread(target=read, daemon=True)
    run._reader.start()
    started: list[psutil.Process] = []
    try:
        run.wait_ready()
        started = run.descendants()
        yield run
    finally:
        started += run.descendants()
        try:
            run.stop()
        except subprocess.TimeoutExpired:
            proc.kill()
        for child in started:  # nothing may outlive `interstate up`; kill stragglers regardless
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def tls_client(folder: Path, chain_pem: str, key_pem: str, bundle_pem: str) -> httpx.Client:
    """An HTTPS client with this certificate that trusts `bundle_pem` (the server's identity is a
    SPIFFE URI, not a host name, so only the chain is verified)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=bundle_pem)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".pem", delete=False) as cert:
        cert.write(chain_pem)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".key", delete=False) as key:
        key.write(key_pem)
    context.load_cert_chain(cert.name, key.name)
    return httpx.Client(verify=context, timeout=10, trust_env=False)


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def envoy_admin(socket: str, path: str, method: str = "GET", **params: str) -> httpx.Response:
    """A request to one of the mesh's Envoys' admin, over its Unix socket (status says where:
    `sidecar.admin`, `ingress.admin`); no TCP port serves it."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=5, trust_env=False) as client:
        return client.request(method, "http://envoy-admin" + path, params=params)


def envoy_certificates(socket: str) -> list[dict[str, Any]]:
    """Every certificate an Envoy holds (its admin `/certs`: SVIDs and the xDS client's)."""
    data = envoy_admin(socket, "/certs").json()
    return [cert for entry in data.get("certificates", []) for cert in entry.get("cert_chain", [])]


def envoy_stats(socket: str, pattern: str) -> dict[str, int]:
    response = envoy_admin(socket, "/stats", filter=pattern, format="json")
    return {s["name"]: int(s["value"]) for s in response.json()["stats"] if "value" in s}


class Load:
    """Bounded background traffic: `workers` threads sending GETs until stopped or `max_s` passes.
    `client` makes each worker's httpx client (e.g. one that uses a side-car as its proxy);
    `seen` counts the `served_by` of each good answer."""

    def __init__(
        self,
        url: str,
        workers: int = 4,
        max_s: float = 60,
        headers: dict[str, str] | None = None,
        client: Callable[[], httpx.Client] | None = None,
    ) -> None:
        self.url = url
        self.max_s = max_s
        self.headers = headers or {}
        self.client = client or (lambda: httpx.Client(timeout=10, trust_env=False))
        self.ok = 0
        self.failures: list[str] = []
        self.seen: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _work(self) -> None:
        deadline = time.monotonic() + self.max_s
        with self.client() as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.get(self.url, headers=self.headers)
                    good = response.status_code == 200
                    served = response.json().get("served_by", "?") if good else ""
                    detail = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    good, served, detail = False, "", repr(exc)
                with self._lock:
                    if good:
                        self.ok += 1
                        self.seen[served] += 1
                    else:
                        self.failures.append(detail)
