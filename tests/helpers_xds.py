"""Shared helpers for the xDS tests: a small mesh, ports, a scripted ADS client, an upstream, Envoy.

Used by tests/test_xds_protocol.py (scripted client against AdsServer) and
tests/test_xds_envoy.py (a real Envoy side-car). Everything listens on 127.0.0.1 on ephemeral
ports, every wait is bounded, and every context manager stops what it started even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from interstate.ca.authority import Authority, utcnow
from interstate.ca.spiffe import workload_id
from interstate.compile import ProxyResources, bootstrap, compile_proxy
from interstate.compile.proxy import Credentials, Proxy
from interstate.config.loader import decode_sources
from interstate.core.identity import XDS_SERVER_NAME
from interstate.model.index import Endpoint, MeshIndex
from interstate.standalone.envoy import envoy_command, find_envoy
from interstate.xds.cache import SnapshotCache
from interstate.xds.server import SERVICE, AdsServer
from interstate.xds.snapshot import Snapshot

T = TypeVar("T")

METHOD = f"/{SERVICE}/StreamAggregatedResources"

# hopProtocol http1: the tests' `upstream` stands in for a side-car and speaks HTTP/1.1 only
MESH = """
apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: {name: m}
spec: {defaultPolicy: FEC-DEFAULT, hopProtocol: http1}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: results, annotations: {mesh.codifyhq.io/policy: FEC-F101}}
spec: {port: 8080, run: {command: [x]}, calls: [stats]}
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: stats}
spec: {port: 8080, run: {command: [x]}}
"""

# The same mesh where `results` also calls `audit`: every resource type changes.
MESH_WITH_AUDIT = (
    MESH.replace("calls: [stats]", "calls: [stats, audit]")
    + """
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: {name: audit}
spec: {port: 8080, run: {command: [x]}}
"""
)


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago (Envoy needs ports up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_credentials(service: str = "results", authority: Authority | None = None) -> Credentials:
    """A real X.509-SVID for `service` from a throw-away CA (each call: a new key)."""
    authority = authority or Authority.create("interstate.local", utcnow())
    issued = authority.issue(workload_id("interstate.local", service), timedelta(hours=1), utcnow())
    return Credentials(issued.identity, issued.chain_pem, issued.key_pem, authority.bundle_pem)


def compile_mesh(
    proxy: Proxy,
    text: str = MESH,
    endpoints: dict[str, Iterable[tuple[str, int]]] | None = None,
    credentials: Credentials | None = None,
) -> ProxyResources:
    """Compile `proxy`'s resources from mesh YAML and {service: [(address, port), ...]}."""
    config = decode_sources({"mesh.yaml": text})
    eps = {
        service: tuple(Endpoint(service, i, addr, port) for i, (addr, port) in enumerate(addrs))
        for service, addrs in (endpoints or {}).items()
    }
    return compile_proxy(MeshIndex(config, eps), proxy, credentials)


def snapshot_of(
    proxy: Proxy,
    text: str = MESH,
    endpoints: dict[str, Iterable[tuple[str, int]]] | None = None,
    credentials: Credentials | None = None,
) -> Snapshot:
    return Snapshot.from_resources(compile_mesh(proxy, text, endpoints, credentials))


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run one async test body on a fresh event loop, with a hard bound."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    """Poll a sync predicate until truthy or until `timeout`; returns the last result's truth."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def metric(server: AdsServer, name: str, **labels: str) -> float:
    value = server.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def ads_server(cache: SnapshotCache | None = None) -> AsyncIterator[AdsServer]:
    server = AdsServer(cache if cache is not None else SnapshotCache())
    try:
        await server.start("127.0.0.1", 0)
        yield server
    finally:
        await server.stop(0)


# ---- a scripted ADS client ------------------------------------------------------------------


@dataclass
class AdsClient:
    """One ADS stream driven by hand. A background task reads responses into a queue, so
    "nothing arrives" can be checked with a timeout without cancelling a gRPC read."""

    port: int
    node_id: str
    channel: grpc.aio.Channel | None = None
    call: Any = None
    responses: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = field(default_factory=asyncio.Queue)
    _reader: asyncio.Task[None] | None = None
    _node_sent: bool = False

    def open_channel(self) -> grpc.aio.Channel:
        """Plain gRPC to the server; a subclass may bring TLS."""
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    async def __aenter__(self) -> AdsClient:
        self.channel = self.open_channel()
        try:
            self.call = self.channel.stream_stream(
                METHOD,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )()
            self._reader = asyncio.create_task(self._read())
        except BaseException:
            await self.channel.close(None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None

    async def _read(self) -> None:
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    return
                await self.responses.put(message)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by recv()
            await self.responses.put(exc)

    async def send(
        self,
        type_url: str,
        *,
        version: str = "",
        nonce: str = "",
        names: Iterable[str] = (),
        error: str | None = None,
    ) -> None:
        """A DiscoveryRequest; the node is sent on the first message only, as Envoy does."""
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=version,
            response_nonce=nonce,
            resource_names=list(names),
        )
        if not self._node_sent:
            request.node.CopyFrom(base_pb2.Node(id=self.node_id, cluster="test"))
            self._node_sent = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def ack(self, response: discovery_pb2.DiscoveryResponse, names: Iterable[str] = ()) -> None:
        """The request Envoy sends after accepting `response` (names: its current interest)."""
        await self.send(response.type_url, version=response.version_info, nonce=response.nonce, names=names)

    async def recv(self, timeout: float = 1.0) -> discovery_pb2.DiscoveryResponse:
        try:
            item = await asyncio.wait_for(self.responses.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no response within {timeout}s") from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def expect_nothing(self, timeout: float = 0.2) -> None:
        try:
            item = await asyncio.wait_for(self.responses.get(), timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no response, got {describe(item)}")


@dataclass
class TlsAdsClient(AdsClient):
    """The scripted ADS stream over mutual TLS, as an Envoy with its bootstrap certificate, on a
    connection of its own (not shared with other channels to the same address). `target`: where
    to dial when it is not the server itself (a relay in between)."""

    credentials: grpc.ChannelCredentials | None = None
    target: str = ""

    def open_channel(self) -> grpc.aio.Channel:
        assert self.credentials is not None
        return grpc.aio.secure_channel(
            self.target or f"127.0.0.1:{self.port}",
            self.credentials,
            options=[("grpc.ssl_target_name_override", XDS_SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)],
        )


def describe(item: object) -> str:
    if isinstance(item, discovery_pb2.DiscoveryResponse):
        return f"{item.type_url.rsplit('.', 1)[-1]} version={item.version_info} nonce={item.nonce}"
    return repr(item)


# ---- an upstream HTTP server ----------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        name = self.server.name  # type: ignore[attr-defined]
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps({"path": self.path, "server": name, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def upstream(name: str = "stats") -> Iterator[int]:
    """A tiny HTTP server on 127.0.0.1 in a thread that says who it is and which path and
    headers reached it; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.name = name  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name=f"upstream-{name}", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---- a real Envoy ---------------------------------------------------------------------------


@dataclass
class EnvoyProcess:
    proc: subprocess.Popen[bytes]
    admin_port: int
    log_path: Path

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def stats(self, pattern: str) -> dict[str, int]:
        """Envoy's admin /stats filtered by a regex, as {name: value} (counters and gauges)."""
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.admin}/stats", params={"filter": pattern})
        response.raise_for_status()
        out: dict[str, int] = {}
        for line in response.text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out

    async def active_clusters(self) -> dict[str, dict[str, Any]]:
        """The dynamic clusters Envoy is using now (not warming), from /config_dump, by name."""
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.admin}/config_dump", params={"resource": "dynamic_active_clusters"})
        response.raise_for_status()
        return {c["cluster"]["name"]: c for c in response.json().get("configs", [])}


async def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.asynccontextmanager
async def envoy(
    workdir: Path, node_id: str, cluster: str, xds_port: int, ready_timeout: float = 20.0
) -> AsyncIterator[EnvoyProcess]:
    """Start a real Envoy with interstate's bootstrap; yield once its admin /ready says LIVE.

    The ADS server must run on the same event loop, so waiting is async. Envoy is terminated
    (then killed) on the way out, whatever happened.
    """
    admin_port = free_port()
    config = workdir / f"{node_id.replace('~', '_')}.json"
    boot = bootstrap.build(node_id, cluster, admin_port, "127.0.0.1", xds_port)
    config.write_text(json.dumps(boot))
    log_path = workdir / f"{node_id.replace('~', '_')}.log"
    argv = envoy_command(find_envoy(), config, "info")
    async with running_envoy(argv, admin_port, log_path, node_id, "/ready", ready_timeout) as process:
        yield process


@contextlib.asynccontextmanager
async def running_envoy(
    argv: list[str], admin_port: int, log_path: Path, name: str, ready_path: str = "/ready", ready_timeout: float = 20.0
) -> AsyncIterator[EnvoyProcess]:
    """Run Envoy with `argv`; yield once its admin `ready_path` answers 200. Its log tail is
    printed if the block fails; it is terminated (then killed) on the way out, whatever happened."""
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    process = EnvoyProcess(proc, admin_port, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"envoy {name} exited with {proc.returncode}:\n{process.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{process.admin}{ready_path}")).status_code == 200:
                        break
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"envoy {name}: {ready_path} not answering in {ready_timeout}s:\n{process.log_tail()}"
                    )
                await asyncio.sleep(0.05)
        yield process
    except BaseException:
        print(f"---- envoy {name} log (tail) ----\n{process.log_tail()}")  # shown on failure
        raise
    finally:
        await _stop(proc)
