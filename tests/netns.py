"""Test helper: another host, as a network namespace joined to this one by a veth pair.

Addresses are from 198.18.0.0/15 only (a /30 per namespace), the namespace has no route out,
and everything is removed afterwards even when the test fails: the processes started in it, the
veth pair and the namespace. Needs root (CI runs as root). The several-hosts and Kubernetes
harnesses are to grow from this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

ECHO_HEADERS = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Host:
    namespace: str
    address: str  # its address, reachable from this host over the veth
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Run `argv` inside the namespace; stopped when the host is removed."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.processes.append(proc)
        return proc

    def echo_server(self, port: int = 8080) -> str:
        """An HTTP server answering every GET with the request's headers as JSON; its base URL."""
        self.start([sys.executable, "-I", "-c", ECHO_HEADERS, self.address, str(port)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ip", "netns", "exec", self.namespace, sys.executable, "-c", _CONNECTS, self.address, str(port)],
                capture_output=True,
                timeout=10,
            )
            if probe.returncode == 0:
                return f"http://{self.address}:{port}"
            time.sleep(0.1)
        raise AssertionError(f"the echo server in {self.namespace} did not start")


_CONNECTS = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()"


@contextmanager
def other_host(index: int = 0) -> Iterator[Host]:
    """A namespace `itest-<pid><index>` at 198.18.N.2, this host's end of the veth at 198.18.N.1."""
    tag = f"{os.getpid() % 10000}{index}"
    namespace, here, there = f"itest-{tag}", f"itv{tag}h", f"itv{tag}n"
    subnet = (os.getpid() * 4 + index) % 250
    local, remote = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
    host = Host(namespace, remote)
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", namespace)
        _ip("addr", "add", f"{local}/30", "dev", here)
        _ip("link", "set", here, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"{remote}/30", "dev", there)
        _ip("netns", "exec", namespace, "ip", "link", "set", there, "up")
        _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield host
    finally:
        for proc in host.processes:
            proc.kill()
            proc.wait(timeout=10)
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=10)  # its peer goes too
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)
