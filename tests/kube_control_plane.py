"""Test helper: a real Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver and
kube-controller-manager), as controller projects run envtest, for tests that need the real API
server's behaviour (RBAC, admission, watch semantics, controllers) rather than
tests/helpers_kube.py's fake.

`running_control_plane(tmp)` is a context manager yielding a `ControlPlane`: HTTPS on a free port
with TLS client-certificate authentication (an admin in `system:masters`), RBAC authorization and
the default admission plugins, and a kube-controller-manager running the controllers that
Deployments, Services, namespaces and service accounts need. There are no nodes, no kubelet and
no scheduler: Pods stay `Pending` with no `spec.nodeName`.

What it takes: the three binaries of tests/kube/tools/build.sh, found in
`.kube-bin/<first 16 hex of sha256(tests/kube/tools/go.sum)>/`, and built there by that script
when absent (Go on PATH; with empty Go caches the build downloads about 0.6 GB of modules and
compiles for about 6 minutes on 2 cores, from warm caches it links in about 17 s, and a set
already built is reused at once). A start takes 2.5-3.5 s on 2 cores: certificates (ECDSA, and
the RSA service-account key) in ~0.05 s, etcd healthy in 0.1-1 s (its election), kube-apiserver's
/readyz in ~2.2 s, kube-controller-manager's /healthz in ~0.1 s (its controllers are at work
about a second later: poll for what they make). The three use about 380 MB of memory
(kube-apiserver ~260, kube-controller-manager ~75, etcd ~40); stopping takes about 1 s.

Each process logs to `tmp/<name>.log` (kept); certificates, kubeconfigs and etcd's data go to a
folder under `tmp` that is removed on exit. Every process is stopped (SIGTERM, then SIGKILL after
5 s) in a `finally`, also when the start fails; a failed start raises `ControlPlaneError` with the
last 40 lines of the failing process's log. The processes also get SIGKILL from the kernel when
the thread that started them dies (PR_SET_PDEATHSIG), so a test run killed outright leaves none
behind: enter `running_control_plane` from a thread that outlives its use (the main thread, as
pytest fixtures do), not from a short-lived worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tests" / "kube" / "tools"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Inside 198.18.128.0/17, the one non-loopback range these tests may use. Nothing listens there:
# Services only get ClusterIPs from it (the `kubernetes` Service gets 198.18.128.1).
SERVICE_CLUSTER_IP_RANGE = "198.18.128.0/20"

# The controllers a test of Deployments, Services, namespaces and service accounts needs; run
# under their own service accounts (--use-service-account-credentials), each with the RBAC role
# that kube-apiserver bootstraps for it. Left out on purpose:
# - node-lifecycle-controller: there is no kubelet, so any Node a test creates would never report
#   Ready; the controller would taint it and evict its Pods, and with no Ready node at all it
#   enters full-disruption mode. Tests that fake Nodes want them left alone.
# - pod-garbage-collector-controller: it deletes Pods bound to Nodes that do not exist, which is
#   what a test binding a Pod to a made-up node name does.
# - the scheduler (not a controller here): Pods stay Pending, which tests assert on.
# - job/cronjob/ttl-after-finished, statefulset, daemonset, storage, certificates, node-ipam:
#   nothing here uses them, and each one adds informers to the start.
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "resourcequota-controller",
    "horizontal-pod-autoscaler-controller",
    "clusterrole-aggregation-controller",
)

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
START_TIMEOUT = 90.0  # seconds for each process to become ready (a busy 2-core machine)
LOG_TAIL = 40
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ControlPlaneError(RuntimeError):
    """A process of the control plane failed to start; the message ends with its log's tail."""


def bin_dir() -> Path:
    """Where build.sh puts the binaries for the current go.sum (they may not be there yet)."""
    digest = hashlib.sha256((TOOLS / "go.sum").read_bytes()).hexdigest()[:16]
    return ROOT / ".kube-bin" / digest


def binaries_built() -> bool:
    folder = bin_dir()
    return all(os.access(folder / name, os.X_OK) for name in BINARIES)


def ensure_binaries() -> Path:
    """The binaries' folder, built with tests/kube/tools/build.sh first if needed."""
    if binaries_built():
        return bin_dir()
    if shutil.which("go") is None:
        raise ControlPlaneError(
            f"the Kubernetes binaries are not built in {bin_dir()} and 'go' is not on PATH to build them "
            "(tests/kube/tools/build.sh, `make kube-tools`)"
        )
    done = subprocess.run(["bash", str(TOOLS / "build.sh")], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-LOG_TAIL:])
        raise ControlPlaneError(f"tests/kube/tools/build.sh failed ({done.returncode}):\n{tail}")
    folder = Path(done.stdout.strip().splitlines()[-1])
    if folder != bin_dir() or not binaries_built():
        raise ControlPlaneError(f"build.sh printed {folder}, expected a complete set in {bin_dir()}")
    return folder


# --- certificates ---------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: Any, lifetime: datetime.timedelta, *, ca: bool
) -> x509.CertificateBuilder:
    """What the CA and its leaves share: names, key, a random serial, validity from an hour ago,
    basic constraints and key usage (signing certificates only for the CA)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


@dataclass
class _Authority:
    """The throw-away CA of one control plane: signs serving and client certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> _Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interstate-test-kubernetes-ca")])
        cert = (
            _builder(name, name, key.public_key(), datetime.timedelta(days=2), ca=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        folder: Path,
        stem: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
        client: bool = True,
    ) -> tuple[Path, Path]:
        """A leaf certificate and key at folder/stem.crt and folder/stem.key: a client certificate
        (Kubernetes reads the user from CN and the groups from O), and a serving one for
        `server_names` (DNS names and IP addresses) when given."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            _builder(x509.Name(subject), self.cert.subject, key.public_key(), datetime.timedelta(days=1), ca=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server_names:
            alt: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alt.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file, key_file = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_file, key)
        return cert_file, key_file


def _kubeconfig(path: Path, server: str, ca_file: Path, cert: Path, key: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --- the control plane ----------------------------------------------------------------------


@dataclass
class ControlPlane:
    """A running control plane. `url` is kube-apiserver's (https://127.0.0.1:PORT); `ca_file`
    verifies it; `client_cert`/`client_key` are the admin's (CN=admin, O=system:masters), also in
    the `kubeconfig` file. Every path lives until the context manager exits."""

    url: str
    ca_file: Path
    client_cert: Path
    client_key: Path
    kubeconfig: Path
    etcd_url: str
    controller_manager_url: str
    logs: dict[str, Path]
    bin_dir: Path
    _authority: _Authority = field(repr=False)
    _certs: Path = field(repr=False)
    service_cluster_ip_range: str = SERVICE_CLUSTER_IP_RANGE
    service_account_issuer: str = SERVICE_ACCOUNT_ISSUER
    _users: int = field(repr=False, default=0)

    def ssl_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """Verifies kube-apiserver with `ca_file` and presents `cert` (the admin's by default)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        certfile, keyfile = cert or (self.client_cert, self.client_key)
        context.load_cert_chain(str(certfile), str(keyfile))
        return context

    def client(self, cert: tuple[Path, Path] | None = None, timeout: float = 10.0) -> httpx.Client:
        """An httpx.Client on `url` as the admin, or as the user of `cert` (see `user_cert`)."""
        return httpx.Client(base_url=self.url, verify=self.ssl_context(cert), timeout=timeout)

    def user_cert(self, name: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
        """A client certificate (cert, key) for user `name` in `groups`, signed by the cluster's
        client CA: authenticated, and authorized only by the RBAC bindings a test makes (plus
        what `system:authenticated` gets: discovery, self-subject reviews)."""
        self._users += 1
        return self._authority.issue(self._certs, f"user-{self._users}", name, groups)

    def token_for(
        self,
        namespace: str,
        service_account: str,
        audiences: Sequence[str] = (SERVICE_ACCOUNT_ISSUER,),
        bound_pod: str | None = None,
        expiration_seconds: int = 3600,
    ) -> str:
        """A service-account token from the TokenRequest API (what the kubelet mounts in a Pod):
        a JWT signed by kube-apiserver for `audiences`, bound to Pod `bound_pod` of the same
        namespace when given (its name and uid then appear in TokenReviews)."""
        spec: dict[str, Any] = {"audiences": list(audiences), "expirationSeconds": expiration_seconds}
        with self.client() as api:
            if bound_pod is not None:
                pod = api.get(f"/api/v1/namespaces/{namespace}/pods/{bound_pod}")
                pod.raise_for_status()
                uid = pod.json()["metadata"]["uid"]
                spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": bound_pod, "uid": uid}
            answer = api.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
            answer.raise_for_status()
            token: str = answer.json()["status"]["token"]
            return token


def free_ports(count: int) -> list[int]:
    """`count` distinct free 127.0.0.1 ports (all probes held open until each one is chosen)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def _tail(log: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def fail(self, why: str) -> ControlPlaneError:
        self.log_file.flush()
        return ControlPlaneError(f"{self.name} {why}; last {LOG_TAIL} lines of {self.log}:\n{_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after STOP_GRACE seconds; always reaped."""
        try:
            if self.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGTERM)
                try:
                    self.popen.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.popen.pid, signal.SIGKILL)
                    self.popen.wait(STOP_GRACE)
            # Anything it left in its group (none of the three forks) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        finally:
            self.log_file.close()


def _child_env() -> dict[str, str]:
    # No proxy: kube-apiserver would send webhook and aggregated-API calls through one.
    return {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}} | {
        "NO_PROXY": "*"
    }


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it dies, so that even a
    test run killed without its `finally` (SIGKILL, os._exit) leaves no control plane behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _start(name: str, argv: list[str], logs: Path, running: list[_Process]) -> _Process:
    log = logs / f"{name}.log"
    log_file = log.open("ab")
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            start_new_session=True,  # its own process group, stopped as one
            preexec_fn=_die_with_parent,
        )
    except BaseException:
        log_file.close()
        raise
    process = _Process(name, popen, log, log_file)
    running.append(process)
    return process


def _wait_ready(process: _Process, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = process.popen.poll()
        if code is not None:
            raise process.fail(f"exited with code {code} before {what}")
        try:
            if ready():
                return
        except (httpx.HTTPError, OSError, ValueError):  # not listening yet, or no JSON yet
            pass
        if time.monotonic() >= deadline:
            raise process.fail(f"not ready after {timeout:.0f} s ({what})")
        time.sleep(0.05)


def _http_ok(url: str, verify: ssl.SSLContext | bool = True) -> bool:
    return httpx.get(url, verify=verify, timeout=2.0).status_code == 200


@contextlib.contextmanager
def running_control_plane(tmp: Path) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver and kube-controller-manager on free 127.0.0.1 ports, ready when
    yielded (kube-apiserver's /readyz and kube-controller-manager's /healthz answer 200); logs in
    `tmp/<name>.log`. Everything is stopped and the working folder removed on exit."""
    binaries = ensure_binaries()
    tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kube-", dir=tmp))
    running: list[_Process] = []
    try:
        certs = work / "pki"
        certs.mkdir()
        authority = _Authority.create()
        ca_file = certs / "ca.crt"
        ca_file.write_bytes(authority.cert.public_bytes(serialization.Encoding.PEM))
        serving_cert, serving_key = authority.issue(
            certs,
            "serving",
            "kube-apiserver",
            server_names=(
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                str(next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts())),
            ),
            client=False,
        )
        admin_cert, admin_key = authority.issue(certs, "admin", "admin", ["system:masters"])
        kcm_cert, kcm_key = authority.issue(certs, "kube-controller-manager", "system:kube-controller-manager")
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_private, sa_public = certs / "service-account.key", certs / "service-account.pub"
        _write_key(sa_private, sa_key)
        sa_public.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

        client_port, peer_port, api_port, kcm_port = free_ports(4)
        etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = _start(
            "etcd",
            [
                str(binaries / "etcd"),
                "--name=test",
                f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                "--initial-cluster-state=new",
                # Throw-away data: no fsync on each write (as envtest runs it).
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            tmp,
            running,
        )
        _wait_ready(
            etcd, lambda: httpx.get(f"{etcd_url}/health", timeout=2.0).json().get("health") == "true", "/health"
        )

        url = f"https://127.0.0.1:{api_port}"
        apiserver = _start(
            "kube-apiserver",
            [
                str(binaries / "kube-apiserver"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The `kubernetes` Service's endpoints would be the advertise address, and the
                # endpoint reconciler refuses a loopback one: no reconciler, so that Service has
                # no endpoints (no Pod runs here to use it).
                "--endpoint-reconciler-type=none",
                f"--secure-port={api_port}",
                f"--etcd-servers={etcd_url}",
                f"--cert-dir={work / 'apiserver'}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={ca_file}",
                # RBAC only: Node authorization is for kubelets, and there are none.
                "--authorization-mode=RBAC",
                # On by default in 1.37 (with NamespaceLifecycle, LimitRanger, ServiceAccount,
                # PodSecurity, Priority, ...); named so that a change of defaults can't drop them.
                "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_public}",
                f"--service-account-signing-key-file={sa_private}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # API Priority and Fairness off: no FlowSchema bootstrap to wait for at start.
                "--enable-priority-and-fairness=false",
                "--profiling=false",
            ],
            tmp,
            running,
        )
        admin = ssl.create_default_context(cafile=str(ca_file))
        admin.load_cert_chain(str(admin_cert), str(admin_key))
        _wait_ready(apiserver, lambda: _http_ok(f"{url}/readyz", admin), "/readyz")

        admin_kubeconfig = _kubeconfig(work / "admin.kubeconfig", url, ca_file, admin_cert, admin_key, "admin")
        kcm_kubeconfig = _kubeconfig(
            work / "kube-controller-manager.kubeconfig", url, ca_file, kcm_cert, kcm_key, "kube-controller-manager"
        )
        kcm_url = f"https://127.0.0.1:{kcm_port}"
        kcm = _start(
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                f"--kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={work / 'controller-manager'}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--controllers={','.join(CONTROLLERS)}",
                # Each controller under its own service account in kube-system, with the role
                # kube-apiserver bootstraps for it: the RBAC of a real cluster (the role of
                # system:kube-controller-manager alone can't manage Deployments or Pods).
                "--use-service-account-credentials=true",
                # For the serviceaccount-token controller (legacy token Secrets), same key as
                # kube-apiserver signs with; and the CA it publishes as kube-root-ca.crt.
                f"--service-account-private-key-file={sa_private}",
                f"--root-ca-file={ca_file}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            tmp,
            running,
        )
        _wait_ready(
            kcm, lambda: _http_ok(f"{kcm_url}/healthz", ssl.create_default_context(cafile=str(ca_file))), "/healthz"
        )

        yield ControlPlane(
            url=url,
            ca_file=ca_file,
            client_cert=admin_cert,
            client_key=admin_key,
            kubeconfig=admin_kubeconfig,
            etcd_url=etcd_url,
            controller_manager_url=kcm_url,
            logs={process.name: process.log for process in running},
            bin_dir=binaries,
            _authority=authority,
            _certs=certs,
        )
    finally:
        for process in reversed(running):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)
