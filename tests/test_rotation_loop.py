"""The control plane's rotation loop on a virtual clock (issue 22): it pushes when a certificate
reaches half its life, never before, and each push's re-issue moves the next due time on.
(The real rotation, under traffic with real Envoys, is `test_e2e_rotation.py`.)"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from interstate.ca.authority import utcnow
from interstate.compile import Proxy
from interstate.core.identity import IdentitySettings, MeshIdentity
from interstate.core.plane import ROTATION_CHECK_MAX_S, ControlPlane


class Stop(Exception):
    pass


def test_certificates_are_pushed_anew_at_each_half_life_on_a_virtual_clock(tmp_path: Path) -> None:
    ttl = timedelta(hours=2)
    settings = IdentitySettings(tmp_path / "certs", tmp_path / "ca", cert_ttl=ttl)
    plane = ControlPlane(settings, tmp_path / "audit.jsonl")
    identity = plane.identity = MeshIdentity(settings, "fec.gov.local")
    proxies = [Proxy.sidecar("results", 0, inbound_port=1, outbound_port=2, app_port=3), Proxy.ingress(8080)]
    start = utcnow()
    clock = {"now": start}
    for proxy in proxies:
        identity.credentials(proxy, start)
    pushes: list[timedelta] = []
    slept: list[float] = []

    def now() -> object:
        return clock["now"]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += timedelta(seconds=seconds)
        if clock["now"] - start > timedelta(hours=3, minutes=30):
            raise Stop

    def push() -> None:  # what a push does to certificates: re-issue those due
        pushes.append(clock["now"] - start)
        for proxy in proxies:
            identity.credentials(proxy, clock["now"])

    async def run() -> None:
        try:
            await plane.rotation(push, now=now, sleep=sleep)  # type: ignore[arg-type]
        except Stop:
            pass

    asyncio.run(run())
    half = ttl / 2
    assert len(pushes) == 3  # at 1 h, 2 h and 3 h
    for n, at in enumerate(pushes, start=1):
        assert n * half <= at < n * half + timedelta(seconds=1), (n, at)
    assert max(slept) <= ROTATION_CHECK_MAX_S  # it looks again at least every 30 s
    assert all(c.not_after - clock["now"] > timedelta(minutes=30) for _, c in identity.certs.items())
