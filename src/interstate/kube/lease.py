"""Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

Every replica of the controller serves xDS; what must happen once (writing the status of custom
resources) is done by the one holding the Lease. `LeaseElector.run()` loops: it creates the
Lease when there is none, renews it every `renew_s` while it holds it, and takes it over when
its holder has not renewed it for `duration_s` — measured by this replica's own clock since it
last saw the Lease change, never by comparing clocks across machines. Writes carry the Lease's
`resourceVersion`, so of two replicas racing for it the API server lets one win (409 for the
other). A holder that cannot renew within `duration_s` stops counting itself leader before anyone
else may take over. `release()` (a clean stop) hands the Lease back at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = "interstate-controller"
    duration_s: int = 15  # client-go's default
    renew_s: float = 5.0
    retry_s: float = 2.0


def _micro_time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: LeaseSettings,
        identity: str,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self.identity = identity
        self.on_change = on_change
        self.clock = clock
        self.leading = False
        self._renewed = 0.0  # when this replica last renewed (its clock)
        self._seen: tuple[str, str] | None = None  # (holder, renewTime) last observed ...
        self._seen_at = 0.0  # ... and when (this replica's clock)
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{settings.namespace}/leases/{settings.name}"

    async def run(self) -> None:
        """Try to hold the Lease, forever (cancel to stop)."""
        while True:
            try:
                await self._try()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.warning("lease %s/%s: %s", self.settings.namespace, self.settings.name, exc)
            if self.leading and self.clock() - self._renewed > self.settings.duration_s:
                self._set(False)  # could not renew in time: another may take over now
            await asyncio.sleep(self.settings.renew_s if self.leading else self.settings.retry_s)

    async def release(self) -> None:
        """Hand the Lease back (a clean stop): the next replica need not wait for it to expire."""
        if not self.leading:
            return
        self._set(False)
        try:
            response = await self.client.get(self.path)
            lease = response.json()
            if response.status_code == 200 and lease.get("spec", {}).get("holderIdentity") == self.identity:
                lease["spec"] |= {"holderIdentity": "", "leaseDurationSeconds": 1}
                await self.client.put(self.path, json=lease)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not release the lease: %s", exc)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info("%s %s the lease %s", self.identity, "holds" if leading else "no longer holds", self.path)
            self.on_change(leading)

    async def _try(self) -> None:
        response = await self.client.get(self.path)
        now = datetime.now(UTC)
        if response.status_code == 404:
            await self._write("POST", self._lease(None, now, transitions=0))
            return
        response.raise_for_status()
        lease: dict[str, Any] = response.json()
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        seen = (holder, str(spec.get("renewTime") or ""))
        if seen != self._seen:
            self._seen, self._seen_at = seen, self.clock()
        duration = int(spec.get("leaseDurationSeconds") or self.settings.duration_s)
        expired = self.clock() - self._seen_at > duration
        if holder == self.identity:
            await self._write("PUT", self._lease(lease, now, transitions=int(spec.get("leaseTransitions") or 0)))
        elif not holder or expired:
            transitions = int(spec.get("leaseTransitions") or 0) + 1
            log.info("lease %s: taking it over from %r", self.path, holder or "nobody")
            await self._write("PUT", self._lease(lease, now, transitions=transitions, acquired=True))
        else:
            self._set(False)

    def _lease(
        self, current: dict[str, Any] | None, now: datetime, transitions: int, acquired: bool = False
    ) -> dict[str, Any]:
        spec = dict((current or {}).get("spec") or {})
        if current is None or acquired:
            spec["acquireTime"] = _micro_time(now)
        spec |= {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.settings.duration_s,
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }
        metadata = (current or {}).get("metadata") or {"name": self.settings.name, "namespace": self.settings.namespace}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def _write(self, method: str, lease: dict[str, Any]) -> None:
        path = self.path if method == "PUT" else self.path.rsplit("/", 1)[0]
        response = await self.client.request(method, path, json=lease)
        if response.status_code in (200, 201):
            self._renewed = self.clock()
            self._set(True)
        elif response.status_code == 409:  # another replica wrote it first
            self._set(False)
        else:
            response.raise_for_status()
