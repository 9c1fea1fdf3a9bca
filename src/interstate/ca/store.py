"""Which certificate each proxy holds now, and when it is due for rotation.

`CertStore.current(key, identity, now)` returns the certificate in force for a proxy, issuing a
new one when there is none, the identity changed, or it passed half its life. The control plane
calls it on every push, so rotation is nothing but a push after the half-life.

With a `folder`, every certificate issued is also kept there (one JSON file per key, 0600, in a
0700 folder) and read back when the store is created: a restarted control plane serves the
certificates its Envoys already hold (same SDS version, no churn) and rotates only what is due.
Files that do not parse, or were not signed by the current authority, are ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from interstate.ca.authority import Authority, Issued

log = logging.getLogger(__name__)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


class CertStore:
    def __init__(self, authority: Authority, ttl: timedelta, folder: Path | None = None) -> None:
        self.authority = authority
        self.ttl = ttl
        self.folder = folder
        self._issued: dict[str, Issued] = {}
        self.issued_total = 0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)
            self._issued = self._load(folder)

    def current(self, key: str, identity: str, now: datetime, common_name: str | None = None) -> Issued:
        cert = self._issued.get(key)
        if cert is None or cert.identity != identity or now >= cert.rotate_at():
            cert = self.authority.issue(identity, self.ttl, now, common_name=common_name)
            self._issued[key] = cert
            self.issued_total += 1
            self._save(key, cert)
        return cert

    # ---- persistence -----------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def _save(self, key: str, cert: Issued) -> None:
        if self.folder is None:
            return
        record = {
            "key": key,
            "identity": cert.identity,
            "cert_pem": cert.cert_pem,
            "chain_pem": cert.chain_pem,
            "key_pem": cert.key_pem,
            "serial": cert.serial,
            "not_before": cert.not_before.isoformat(),
            "not_after": cert.not_after.isoformat(),
        }
        write_private(self._path(key), json.dumps(record))

    def _load(self, folder: Path) -> dict[str, Issued]:
        out: dict[str, Issued] = {}
        for path in sorted(folder.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                cert = x509.load_pem_x509_certificate(record["cert_pem"].encode())
                cert.verify_directly_issued_by(self.authority.cert)
                issued = Issued(
                    record["identity"],
                    record["cert_pem"],
                    record["chain_pem"],
                    record["key_pem"],
                    int(record["serial"]),
                    datetime.fromisoformat(record["not_before"]),
                    datetime.fromisoformat(record["not_after"]),
                )
                key = str(record["key"])
            except (OSError, ValueError, KeyError, TypeError, InvalidSignature) as exc:
                log.warning("ignoring the kept certificate %s: %s", path, exc)
                continue
            if path == self._path(key):
                out[key] = issued
        return out

    def next_rotation(self) -> datetime | None:
        return min((c.rotate_at() for c in self._issued.values()), default=None)

    def forget(self, key: str) -> None:
        self._issued.pop(key, None)
        if self.folder is not None:
            self._path(key).unlink(missing_ok=True)

    def keep_only(self, keys: set[str]) -> None:
        for key in set(self._issued) - keys:
            self.forget(key)

    def items(self) -> list[tuple[str, Issued]]:
        return sorted(self._issued.items())
