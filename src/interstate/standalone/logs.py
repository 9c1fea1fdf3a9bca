"""Logs that cannot fill the disk: rotated by size, a bounded number kept, their disk use told.

Election night at 100 requests/s wrote 58 MB of access logs in 5 minutes (about 17 GB a day); a
full disk is an outage. Every `CHECK_EVERY_S` the control plane's `LogKeeper` looks at each file
of the run folder's `logs/`:
- an Envoy's access log (`*.envoy.log`, written by Envoy's file access logger) over the limit is
  renamed to `.1` (older ones shift to `.2` ... and the last goes) and Envoy is told to reopen
  its access logs (`POST /reopen_logs`): nothing is lost, and the boundary ledger reads the
  renamed file on from where it was (it knows files by inode);
- any other log over the limit (an app's output, an Envoy's own messages, the control plane's,
  an outlier event log) is copied to `.1` and truncated in place (its writer appends, so it
  carries on at the start): lines written during the copy may be lost, which is why the
  access logs, the evidence, are not kept this way.
`disk_use` is what `interstate status` shows. Called by `standalone.mesh`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from interstate.core.status import LogUse
from interstate.telemetry import envoy_admin

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024 * 1024  # one log file, before it is rotated (`--log-max-mb`)
KEEP = 3  # rotated files kept per log (`--log-keep`)
CHECK_EVERY_S = 5.0
ACCESS_LOG_SUFFIX = ".envoy.log"


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _shift(path: Path, keep: int) -> None:
    """path.{keep-1} -> path.{keep}, ..., path.1 -> path.2; the oldest beyond `keep` goes."""
    rotated(path, keep).unlink(missing_ok=True)
    for n in range(keep - 1, 0, -1):
        older = rotated(path, n)
        if older.exists():
            older.rename(rotated(path, n + 1))


def rotate_by_rename(path: Path, keep: int) -> None:
    _shift(path, keep)
    path.rename(rotated(path, 1))


def rotate_by_copy(path: Path, keep: int) -> None:
    _shift(path, keep)
    shutil.copyfile(path, rotated(path, 1))
    os.truncate(path, 0)


def disk_use(folder: Path, max_bytes: int, keep: int, rotations: int = 0) -> LogUse:
    total = files = current = 0
    for path in folder.glob("*"):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        total += size
        files += 1
        current += path.suffix == ".log"
    return LogUse(total, files, current * (1 + keep) * max_bytes, rotations)


class LogKeeper:
    def __init__(
        self,
        folder: Path,
        reopen: Callable[[Path], str | None],
        http: httpx.AsyncClient,
        max_bytes: int = MAX_BYTES,
        keep: int = KEEP,
        before: Callable[[], None] = lambda: None,
    ) -> None:
        """`reopen(access_log)`: the admin socket of the Envoy writing that access log (None: none
        runs now). `before()` runs before files are shifted (the boundary ledger reads what
        it has not read yet, so that the oldest file goes only once counted)."""
        self.folder = folder
        self.reopen = reopen
        self.http = http
        self.max_bytes = max_bytes
        self.keep = keep
        self.before = before
        self.rotations = 0

    def use(self) -> LogUse:
        return disk_use(self.folder, self.max_bytes, self.keep, self.rotations)

    async def run(self, every_s: float = CHECK_EVERY_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.check()
            except Exception:  # keep looking after the logs, whatever one round hit
                log.exception("log rotation failed")

    async def check(self) -> list[Path]:
        """Rotate each log over the limit; the logs rotated."""
        done = []
        due = self._too_big(self.folder.glob("*.log"))
        if due:
            self.before()
        for path in due:
            if path.name.endswith(ACCESS_LOG_SUFFIX):
                socket = self.reopen(path)
                if socket is None:
                    continue  # its Envoy is gone: nothing writes there any more
                rotate_by_rename(path, self.keep)
                try:
                    response = await envoy_admin.post(self.http, socket, "/reopen_logs", timeout=5)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    log.warning("rotated %s, but its Envoy did not reopen it (%s)", path.name, exc)
            else:
                rotate_by_copy(path, self.keep)
            self.rotations += 1
            done.append(path)
            log.info("rotated %s (over %d bytes; %d kept)", path.name, self.max_bytes, self.keep)
        return done

    def _too_big(self, paths: Iterable[Path]) -> list[Path]:
        out = []
        for path in paths:
            try:
                if path.stat().st_size > self.max_bytes:
                    out.append(path)
            except OSError:
                continue
        return out
