"""One Envoy process (side-car or ingress): writes its bootstrap, starts it, drains it, stops it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from interstate.compile import Proxy
from interstate.settings import Settings
from interstate.standalone.envoy import envoy_command
from interstate.standalone.process import Child, http_probe, wait_ready
from interstate.telemetry.envoys import read_stats


def log_paths(settings: Settings, proxy: Proxy) -> tuple[Path, Path]:
    """Where a proxy's Envoy writes its log (access log lines included) and its outlier events."""
    name = proxy.node_id.replace("~", "-")
    folder = settings.run_dir / "logs"
    return folder / f"{name}.envoy.log", folder / f"{name}.outlier.log"


class EnvoyProcess:
    def __init__(
        self,
        proxy: Proxy,
        admin_port: int,
        config: dict[str, Any],
        binary: Path,
        settings: Settings,
        http: httpx.AsyncClient,
    ) -> None:
        """`config` is the Envoy bootstrap (see `compile.bootstrap`), written to the run folder."""
        self.proxy = proxy
        self.admin_port = admin_port
        self.settings = settings
        self.http = http
        name = proxy.node_id.replace("~", "-")
        self.bootstrap_path = settings.run_dir / "envoy" / f"{name}.json"
        self.bootstrap_path.parent.mkdir(parents=True, exist_ok=True)
        self.bootstrap_path.write_text(json.dumps(config, indent=1))
        self.log_path, self.outlier_log = log_paths(settings, proxy)
        self.child = Child(
            f"envoy {proxy.node_id}",
            envoy_command(binary, self.bootstrap_path, settings.envoy_log_level),
            self.log_path,
        )

    @property
    def admin_url(self) -> str:
        return f"http://{self.settings.host}:{self.admin_port}"

    async def start(self) -> None:
        await self.child.start()
        await wait_ready(self.child, http_probe(self.http, self.admin_url + "/ready"), self.settings.ready_timeout_s)

    async def stats(self, pattern: str) -> dict[str, int]:
        """Counters and gauges whose name matches `pattern` (Envoy's regex filter)."""
        return await read_stats(self.http, self.admin_url, pattern)

    async def drain(self, timeout: float) -> None:
        """Stop taking new connections gracefully, then wait for in-flight requests to finish."""
        if not self.child.running:
            return
        try:
            await self.http.post(self.admin_url + "/drain_listeners", params={"graceful": ""}, timeout=2.0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                active = await self.stats(r"^http\.(inbound|inbound_plaintext|outbound|ingress)\.downstream_rq_active$")
                if sum(active.values()) == 0:
                    return
                await asyncio.sleep(0.05)
        except httpx.HTTPError:
            return

    async def stop(self) -> None:
        await self.child.stop(self.settings.stop_timeout_s)
