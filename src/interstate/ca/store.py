"""Which certificate each proxy holds now, and when it is due for rotation.

`CertStore.current(key, identity, now)` returns the certificate in force for a proxy, issuing a
new one when there is none, the identity changed, or it passed half its life. The supervisor
calls it on every push, so rotation is nothing but a push after the half-life.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from interstate.ca.authority import Authority, Issued


class CertStore:
    def __init__(self, authority: Authority, ttl: timedelta) -> None:
        self.authority = authority
        self.ttl = ttl
        self._issued: dict[str, Issued] = {}
        self.issued_total = 0

    def current(self, key: str, identity: str, now: datetime, common_name: str | None = None) -> Issued:
        cert = self._issued.get(key)
        if cert is None or cert.identity != identity or now >= cert.rotate_at():
            cert = self.authority.issue(identity, self.ttl, now, common_name=common_name)
            self._issued[key] = cert
            self.issued_total += 1
        return cert

    def next_rotation(self) -> datetime | None:
        return min((c.rotate_at() for c in self._issued.values()), default=None)

    def forget(self, key: str) -> None:
        self._issued.pop(key, None)

    def keep_only(self, keys: set[str]) -> None:
        for key in set(self._issued) - keys:
            del self._issued[key]

    def items(self) -> list[tuple[str, Issued]]:
        return sorted(self._issued.items())
