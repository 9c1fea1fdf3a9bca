"""The control plane's rotation loop on a virtual clock (issue 22): it pushes when a certificate
reaches half its life, never before, and each push's re-issue moves the next due time on.
(The real rotation, under traffic with real Envoys, is `test_e2e_rotation.py`.)"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from pathlib import Path

from cryptography import x509

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


def sds_files(identity: MeshIdentity, node: str) -> tuple[str, str]:
    sds = json.loads(identity.bootstrap_sds(node).read_text())["resources"][0]["tls_certificate"]
    return sds["certificate_chain"]["filename"], sds["private_key"]["filename"]


def test_bootstrap_certificates_are_renewed_on_disk_and_belong_to_their_run(tmp_path: Path) -> None:
    """At half life a bootstrap certificate is re-issued under new file names and its SDS file
    moved into place naming them; the old files go. A node that leaves takes its files with it,
    and a new run on the same folder drops the previous run's."""
    ttl = timedelta(hours=2)
    settings = IdentitySettings(tmp_path / "certs", tmp_path / "ca", cert_ttl=ttl, run_id="run-a")
    identity = MeshIdentity(settings, "fec.gov.local")
    proxies = [Proxy.sidecar("results", 0, inbound_port=1, outbound_port=2, app_port=3), Proxy.ingress(8080)]
    for proxy in proxies:
        identity.bootstrap_tls(proxy)
    node = proxies[0].node_id
    first = sds_files(identity, node)
    start = utcnow()
    assert identity.next_rotation() is not None and identity.next_rotation() <= start + ttl / 2  # type: ignore[operator]
    assert identity.renew_bootstraps(start) == []  # nothing due yet
    assert sorted(identity.renew_bootstraps(start + ttl / 2 + timedelta(seconds=1))) == sorted(
        p.node_id for p in proxies
    )
    renewed = sds_files(identity, node)
    assert renewed != first and all(Path(f).exists() for f in renewed) and not any(Path(f).exists() for f in first)
    cert = x509.load_pem_x509_certificate(Path(renewed[0]).read_bytes())
    assert cert.not_valid_after_utc > start + ttl  # the new one lives a full ttl from its renewal

    identity.forget_bootstrap(node)
    assert not identity.bootstrap_sds(node).exists() and not any(Path(f).exists() for f in renewed)
    ingress = sds_files(identity, proxies[1].node_id)

    again = MeshIdentity(dataclasses.replace(settings, run_id="run-b"), "fec.gov.local")
    assert again.bootstraps.items() == []
    assert not again.bootstrap_sds(proxies[1].node_id).exists() and not any(Path(f).exists() for f in ingress)
