"""End-to-end: on the mesh's own host, no other process gets into an Envoy's admin, and no other
user reads what the mesh wrote (issue 21).

The election-night example runs from a run folder whose parent anyone may enter, so only the
mesh's own modes protect it. Every TCP port any of the mesh's processes listens on is sent each
admin path an attacker would try (`/quitquitquit`, `/drain_listeners`, ...), straight and through
each side-car's outbound proxy; afterwards every Envoy is the same process, live, undrained, with
no runtime override and its counters intact. Then a local user made for the test (removed after)
tries to read every file and folder of the run folder and to open every admin socket.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from mesh_runner import EXAMPLE, MeshRun, envoy_admin, envoy_stats, running_mesh

pytestmark = pytest.mark.e2e

# Envoy's admin handlers that change or reveal an Envoy (POSTed; Envoy refuses a GET for most).
ADMIN_PATHS = (
    "/quitquitquit",
    "/drain_listeners",
    "/healthcheck/fail",
    "/runtime_modify?interstate.probe=1",
    "/logging?level=trace",
    "/reset_counters",
    "/config_dump",
    "/certs",
    "/stats",
    "/server_info",
)
# What only an Envoy admin answers with: a marker of each handler's reply above.
ADMIN_MARKERS = ("hot_restart_version", "type.googleapis.com/envoy.admin", "cert_chain", "OK\n", "LIVE")


@pytest.fixture(scope="module")
def open_parent() -> Iterator[Path]:
    """A folder anyone may enter and list (unlike pytest's own): only the mesh's modes guard it."""
    folder = Path(tempfile.mkdtemp(prefix="interstate-local-", dir="/tmp"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mesh(open_parent: Path) -> Iterator[MeshRun]:
    with running_mesh(EXAMPLE, open_parent / "run") as run:
        for _ in range(5):  # something in every access log
            assert httpx.get(run.ingress + "/results", timeout=10, trust_env=False).status_code == 200
        yield run


@pytest.fixture(scope="module")
def stranger() -> Iterator[pwd.struct_passwd]:
    """An unprivileged local user, created for these tests and removed after."""
    if os.geteuid() != 0:
        pytest.skip("creating a local user needs root (CI runs as root)")
    name = f"itest{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def envoys(status: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """Every Envoy of the mesh: node -> (pid, admin socket)."""
    out = {
        r["sidecar"]["node"]: (r["sidecar"]["pid"], r["sidecar"]["admin"])
        for s in status["services"].values()
        for r in s["replicas"]
        if r["sidecar"]
    }
    out["ingress~ingress"] = (status["ingress"]["pid"], status["ingress"]["admin"])
    return out


def listening_tcp_ports(run: MeshRun) -> set[int]:
    """Every TCP port that `interstate up` or any process under it listens on."""
    ports = set()
    for proc in [psutil.Process(run.proc.pid), *run.descendants()]:
        try:
            connections = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        ports |= {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
    return ports


def as_user(user: pwd.struct_passwd, script: str, args: Any) -> Any:
    """Run `script` (Python, reading json `args` from argv[1], printing json) as `user`."""
    python = shutil.which("python3", path="/usr/bin:/bin")  # ours may sit where the user cannot go
    assert python is not None, "the test runs its probe with the system's python3"
    done = subprocess.run(
        [python, "-I", "-c", textwrap.dedent(script), json.dumps(args)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_no_tcp_port_of_the_mesh_serves_an_envoy_admin(mesh: MeshRun) -> None:
    status = mesh.status()
    before = envoys(status)
    total = "http.ingress.downstream_rq_total"
    counted = envoy_stats(before["ingress~ingress"][1], f"^{total}$")[total]
    ports = listening_tcp_ports(mesh)
    outbound = {r["sidecar"]["outbound"] for s in status["services"].values() for r in s["replicas"] if r["sidecar"]}
    assert outbound <= ports and int(mesh.ingress.rsplit(":", 1)[1]) in ports  # the survey sees the mesh

    answers = []
    with httpx.Client(timeout=3, trust_env=False, verify=False) as client:
        for port in sorted(ports):
            for path in ADMIN_PATHS:
                for method in ("POST", "GET"):
                    try:
                        response = client.request(method, f"http://127.0.0.1:{port}{path}")
                    except httpx.HTTPError:
                        continue  # refused: TLS only (inbound, xDS), or not HTTP
                    answers.append((port, method, path, response.status_code, response.text[:300]))
        for proxy in sorted(outbound):  # an app's side-car asked to forward to any local port
            with httpx.Client(proxy=f"http://127.0.0.1:{proxy}", timeout=3, trust_env=False) as via:
                for port in sorted(ports):
                    for path in ("/quitquitquit", "/drain_listeners", "/healthcheck/fail"):
                        try:
                            response = via.post(f"http://127.0.0.1:{port}{path}")
                        except httpx.HTTPError:
                            continue
                        answers.append((port, f"POST via {proxy}", path, response.status_code, response.text[:300]))
    assert answers  # the ingress, the apps, the outbound proxies and the admin API do answer
    admin_like = [a for a in answers if a[3] == 200 and any(m in a[4] for m in ADMIN_MARKERS)]
    assert admin_like == []

    after = envoys(mesh.status())
    assert {node: pid for node, (pid, _) in after.items()} == {node: pid for node, (pid, _) in before.items()}
    for node, (_, socket) in after.items():
        state = envoy_stats(socket, r"^(server\.state|runtime\.admin_overrides_active)$")
        assert state == {"server.state": 0, "runtime.admin_overrides_active": 0}, node  # live, not draining
        assert envoy_admin(socket, "/ready").text.strip() == "LIVE"
        assert (
            envoy_stats(socket, r"^listener_manager\.total_listeners_draining$").get(
                "listener_manager.total_listeners_draining", 0
            )
            == 0
        ), node
    # every probe of the ingress port was counted on top of what came before: nothing reset it
    assert envoy_stats(after["ingress~ingress"][1], f"^{total}$")[total] >= counted + 2 * len(ADMIN_PATHS)
    assert httpx.get(mesh.ingress + "/results", timeout=10, trust_env=False).status_code == 200


def test_everything_the_mesh_writes_is_its_own_users_alone(mesh: MeshRun) -> None:
    run_dir = mesh.run_dir
    kinds = {"file": 0, "folder": 0, "socket": 0}
    open_to_others = []
    for path in [run_dir, *run_dir.rglob("*")]:
        mode = path.lstat().st_mode
        kinds["folder" if stat.S_ISDIR(mode) else "socket" if stat.S_ISSOCK(mode) else "file"] += 1
        if mode & 0o077:
            open_to_others.append(f"{path.relative_to(run_dir.parent)} {stat.filemode(mode)}")
    assert open_to_others == []
    assert kinds["socket"] == len(envoys(mesh.status()))  # one admin socket per Envoy, nothing else
    names = {p.name for p in run_dir.rglob("*")}
    assert {"admin.token", "ca.key", "audit.jsonl", "ingress-ingress.json", "ingress-ingress.admin"} <= names


def test_another_local_user_reads_nothing_and_reaches_no_envoy_admin(
    mesh: MeshRun, stranger: pwd.struct_passwd
) -> None:
    run_dir = mesh.run_dir
    sockets = [socket for _, socket in envoys(mesh.status()).values()]
    files = [str(p) for p in run_dir.rglob("*") if p.is_file()]
    wanted = {"admin.token", "ca.key", ".json", ".log", ".pem"}
    assert all(any(w in Path(f).name for f in files) for w in wanted), files  # keys, token, bootstraps, logs
    found = as_user(
        stranger,
        """
        import json, os, socket, sys
        args = json.loads(sys.argv[1])
        out = {"listed": [], "read": [], "connected": []}
        for folder in [args["run"], *args["folders"]]:
            try:
                os.listdir(folder)
                out["listed"].append(folder)
            except OSError:
                pass
        for path in args["files"]:
            try:
                with open(path, "rb") as f:
                    f.read(1)
                out["read"].append(path)
            except OSError:
                pass
        for path in args["sockets"]:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            try:
                s.connect(path)
                s.sendall(b"POST /quitquitquit HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n\\r\\n")
                out["connected"].append(path)
            except OSError:
                pass
            finally:
                s.close()
        print(json.dumps(out))
        """,
        {
            "run": str(run_dir),
            "folders": [str(p) for p in run_dir.rglob("*") if p.is_dir()],
            "files": files,
            "sockets": sockets,
        },
    )
    assert found == {"listed": [], "read": [], "connected": []}
    # and it is the modes that stop it, not the test: the mesh's own user does reach every admin
    for socket in sockets:
        assert envoy_admin(socket, "/ready").text.strip() == "LIVE"
