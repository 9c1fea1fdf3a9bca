"""LogKeeper: logs rotated by size, a bounded number kept, Envoy told to reopen its access log.

The end-to-end proof with real Envoys under traffic (and exact boundary counts across rotations)
is `test_logs_rotate_under_traffic_and_counts_stay_exact` in tests/test_e2e_boundary.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from interstate.standalone.logs import LogKeeper, disk_use, rotated
from interstate.telemetry import envoy_admin

ADMIN = "/run/envoy/sidecar-results-0.admin"  # the admin socket of the Envoy writing the log


def keeper(folder: Path, reopened: list[str], writer: str | None = ADMIN, keep: int = 2) -> LogKeeper:
    def handler(request: httpx.Request) -> httpx.Response:
        reopened.append(f"{request.method} {request.extensions[envoy_admin.SOCKET]} {request.url.path}")
        return httpx.Response(200, text="OK\n")

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return LogKeeper(folder, lambda path: writer, http, max_bytes=100, keep=keep)


def test_an_access_log_over_the_limit_is_renamed_and_its_envoy_reopens_it(tmp_path: Path) -> None:
    log = tmp_path / "sidecar-results-0.envoy.log"
    reopened: list[str] = []
    books = keeper(tmp_path, reopened)
    counted: list[int] = []
    books.before = lambda: counted.append(1)

    async def rounds() -> None:
        for n in range(4):
            log.write_text(f"{n}" * 150)  # (Envoy would create it anew after the reopen)
            assert await books.check() == [log]

    asyncio.run(rounds())
    assert reopened == [f"POST {ADMIN} /reopen_logs"] * 4
    assert len(counted) == 4  # the ledger read before each shift
    assert not log.exists()  # renamed; Envoy creates it again on reopen
    assert rotated(log, 1).read_text() == "3" * 150 and rotated(log, 2).read_text() == "2" * 150
    assert not rotated(log, 3).exists()  # two kept, the older went
    assert books.rotations == 4


def test_other_logs_are_copied_and_truncated_in_place(tmp_path: Path) -> None:
    log = tmp_path / "results-0.app.log"
    log.write_text("x" * 150)
    small = tmp_path / "stats-0.app.log"
    small.write_text("y" * 50)
    reopened: list[str] = []
    books = keeper(tmp_path, reopened)
    inode = log.stat().st_ino
    assert asyncio.run(books.check()) == [log]
    assert log.stat().st_ino == inode and log.stat().st_size == 0  # the app's open file carries on
    assert rotated(log, 1).read_text() == "x" * 150
    assert small.read_text() == "y" * 50 and reopened == []


def test_the_access_log_of_a_stopped_envoy_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "sidecar-results-9.envoy.log"
    log.write_text("z" * 150)
    assert asyncio.run(keeper(tmp_path, [], writer=None).check()) == []
    assert log.exists() and not rotated(log, 1).exists()


def test_disk_use_counts_every_file_and_bounds_what_may_be_kept(tmp_path: Path) -> None:
    (tmp_path / "a.envoy.log").write_text("a" * 10)
    (tmp_path / "a.envoy.log.1").write_text("a" * 100)
    (tmp_path / "b.app.log").write_text("b" * 5)
    use = disk_use(tmp_path, max_bytes=100, keep=2, rotations=1)
    assert (use.bytes, use.files, use.rotations) == (115, 3, 1)
    assert use.limit_bytes == 2 * 3 * 100  # two logs written to, each at most (1 + 2) files
