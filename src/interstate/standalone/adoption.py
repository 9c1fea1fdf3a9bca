"""What runs from a run folder, so that nothing is left running without a way to find and stop it.

The supervisor keeps `state/units.json` up to date: every unit it runs, with the pid and start
time of its app and Envoy; and `state/supervisor.json`: its own pid and start time. Both go when
it stops cleanly. When `interstate up` was killed instead, its apps and Envoys keep serving; the
next `interstate up` on the same folder calls `survey` and adopts each unit whose processes are
still the same ones (same pid *and* start time, so a reused pid is never mistaken for ours) and
whose ports still answer; whatever of a unit fails that check is stopped (only processes that
pass the pid + start-time check are ever signalled) and the unit is started afresh.
`interstate down` stops a mesh the same way when no supervisor is left to ask.
Called by `standalone.supervisor` and the CLI; reads the run folder and /proc (psutil).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from interstate.ca.store import write_private
from interstate.standalone import state
from interstate.standalone.protocol import UnitStatus

log = logging.getLogger(__name__)

UNITS_FILE = "units.json"
SUPERVISOR_FILE = "supervisor.json"


def started_at(pid: int | None) -> float | None:
    """The process's start time (seconds since the epoch), None when there is no such process."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


# ---- what the supervisor writes -----------------------------------------------------------------
def save_units(run_dir: Path, units: list[UnitStatus]) -> None:
    rows = [
        {"unit": u.to_json(), "app_started": started_at(u.app_pid), "envoy_started": started_at(u.envoy_pid)}
        for u in units
    ]
    write_private(state.folder(run_dir) / UNITS_FILE, json.dumps(rows))


def save_supervisor(run_dir: Path) -> None:
    record = {"pid": os.getpid(), "started": started_at(os.getpid())}
    write_private(state.folder(run_dir) / SUPERVISOR_FILE, json.dumps(record))


def forget(run_dir: Path) -> None:
    """After a clean stop: nothing runs from this folder any more."""
    for name in (UNITS_FILE, SUPERVISOR_FILE):
        (run_dir / state.FOLDER / name).unlink(missing_ok=True)


def live_supervisor(run_dir: Path) -> int | None:
    """The pid of the `interstate up` still running from this folder, if any."""
    try:
        record = json.loads((run_dir / state.FOLDER / SUPERVISOR_FILE).read_text())
        pid, started = int(record["pid"]), record["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if started is not None and started_at(pid) == started else None


# ---- what a new supervisor finds ------------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    unit: UnitStatus
    pids: tuple[tuple[int, float], ...]  # (pid, start time) of its processes verifiably still ours
    adoptable: bool  # every process of the unit is ours, alive, and its ports answer
    why: str = ""  # why not, when not


def _listening(address: int | str) -> bool:
    """A port on 127.0.0.1, or a Unix socket's path, accepts a connection."""
    family, target = (socket.AF_INET, ("127.0.0.1", address)) if isinstance(address, int) else (socket.AF_UNIX, address)
    with socket.socket(family) as sock:
        sock.settimeout(0.5)
        try:
            return sock.connect_ex(target) == 0
        except OSError:  # a Unix socket path that is empty, too long or not a socket
            return False


def _check(row: dict[str, Any]) -> Found:
    unit = UnitStatus.from_json(row["unit"])
    ours: list[tuple[int, float]] = []
    problems: list[str] = []
    for what, pid, when in (
        ("app", unit.app_pid, row.get("app_started")),
        ("envoy", unit.envoy_pid, row.get("envoy_started")),
    ):
        expected = unit.spec.app if what == "app" else unit.spec.envoy
        if expected is None:
            continue
        if pid is None or when is None or started_at(pid) != when:
            problems.append(f"its {what} (pid {pid}) is gone")
        else:
            ours.append((pid, when))
    if not problems:
        checks: list[tuple[str, int | str]] = [] if unit.spec.app is None else [("its app's port", unit.spec.app.port)]
        if unit.spec.envoy is not None:
            checks.append(("its Envoy's admin socket", unit.spec.envoy.admin))
        problems += [f"{what} {a or '(none)'} does not answer" for what, a in checks if not _listening(a)]
    return Found(unit, tuple(ours), not problems, "; ".join(problems))


def survey(run_dir: Path) -> list[Found]:
    """Every unit the last supervisor ran from `run_dir`, checked (empty when none was left)."""
    try:
        rows = json.loads((run_dir / state.FOLDER / UNITS_FILE).read_text())
    except (OSError, ValueError):
        return []
    found = []
    for row in rows if isinstance(rows, list) else []:
        try:
            found.append(_check(row))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring an unreadable unit in %s: %s", run_dir / state.FOLDER / UNITS_FILE, exc)
    return found


def terminate(pids: tuple[tuple[int, float], ...], timeout: float = 5.0) -> None:
    """SIGTERM the process groups of verified (pid, start time) pairs, then SIGKILL those still
    there after `timeout`; a pid whose start time no longer matches is never signalled."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, when in pids:
            if started_at(pid) == when:
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(started_at(p) == w for p, w in pids):
            time.sleep(0.05)
        if not any(started_at(p) == w for p, w in pids):
            return
