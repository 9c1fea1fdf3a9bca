"""The audit trail: who changed what in the mesh, when, and whether it took effect.

An append-only JSON Lines file in the run folder (`<run-dir>/audit.jsonl`), one record per event:

    {"seq": 7, "time": "2025-11-04T20:15:03.120Z", "actor": "admin-api 127.0.0.1",
     "action": "replicas.scale", "target": ["stats"], "outcome": "ok",
     "detail": {"from": 1, "to": 2, "started": ["stats-1"], "stopped": []},
     "prev": "<hash of record 6>", "hash": "<sha256 of this record without hash>"}

`hash` is the SHA-256 (hex) of the record's canonical JSON without `hash` (UTF-8 of
`json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`); `prev` is the
previous record's `hash` (`GENESIS` for the first), so `verify` finds the first record that was
edited, deleted, inserted or moved. `audit.head` next to the file holds the last record's seq
and hash (replaced atomically after each record), which is how records cut off the end are found.
A chain is evidence against careless or partial edits, not against someone who rewrites the
whole trail: note the head hash `interstate audit --verify` prints somewhere else to pin it.

Each record is flushed and fsynced before `record` returns (changes are rare). A new `interstate
up` continues the chain of the file it finds, and a damaged trail stays damaged: nothing here
ever rewrites or removes a line. Details are small and hold names, counts and digests: never a
header value, a key, a certificate or a token (PEM blocks are blanked, long strings clipped).

Written by `AuditLog`, which the standalone supervisor owns (its change methods, the
autoscaler's decisions and the ADS server's NACK callback record through it); read by the admin
API (`GET /audit`) and by `interstate audit`, which reads the file directly (a stopped mesh too).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from interstate.config import limits
from interstate.errors import ConfigError
from interstate.model.index import MeshConfig

log = logging.getLogger(__name__)

FILE_NAME = "audit.jsonl"
GENESIS = "0" * 64
FIELDS = ("seq", "time", "actor", "action", "target", "outcome", "detail", "prev", "hash")
ACTIONS = frozenset(
    {
        "mesh.start",
        "mesh.stop",
        "config.apply",
        "config.apply.rejected",
        "replicas.scale",
        "fault.set",
        "fault.clear",
        "split.set",
        "autoscaler.scale",
        "xds.nack",
        "xds.identity.refused",
        "control-plane.restart",
        "replica.unresponsive",
        "replica.answers",
        "replica.restart",
    }
)
SYSTEM = "interstate"  # the actor of a change nobody outside asked for
UP = "interstate up"  # the actor of start and stop
SUPERVISOR = "supervisor"  # the actor that restarted a control plane that died
TOOK = ("started", "stopped")  # what a change's result adds to its detail: the replicas it started, stopped
MAX_TEXT = 1000  # characters of one string in a record
MAX_OUTCOME = 300
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)


# ---- records ---------------------------------------------------------------------------------
def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash is taken over."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of `record` without its `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` without PEM blocks, at most `limit` characters."""
    return limits.clip(_PEM.sub("[PEM block removed]", text), limit)


def plain(value: Any) -> Any:
    """`value` as JSON a verifier in any language re-encodes identically: str keys, lists,
    floats rounded to 3 places (non-finite ones as text), strings clipped."""
    if isinstance(value, Mapping):
        return {clip(str(k), 200): plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return [plain(v) for v in sorted(value, key=str)]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else str(value)
    return clip(str(value))


def refused(exc: BaseException) -> str:
    """The `outcome` of a change that did not take effect."""
    if isinstance(exc, asyncio.CancelledError):
        return "refused: interrupted before it completed (the mesh is stopping)"
    if isinstance(exc, ConfigError):
        first = str(exc.issues[0]) if exc.issues else ""
        return clip(f"refused: {len(exc.issues)} issue(s) in the mesh files: {first}", MAX_OUTCOME)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return clip(f"refused: {text}", MAX_OUTCOME)


def error_detail(exc: BaseException) -> dict[str, Any]:
    """What a refused change's `detail` says about the error: its kind and text (or issues)."""
    if isinstance(exc, ConfigError):
        return {"error": "invalid mesh", "issues": [clip(str(i), 300) for i in exc.issues[:20]]}
    return {"error": f"{type(exc).__name__}: {exc}"}


def config_digest(config: MeshConfig) -> str:
    """SHA-256 of a mesh config's resources (canonical JSON by ref; file order does not count)."""
    return hashlib.sha256(canonical(_dumps(config))).hexdigest()


def _dumps(config: MeshConfig) -> dict[str, Any]:
    return {r.ref: r.model_dump(mode="json", by_alias=True) for r in config.resources}


def config_changes(before: MeshConfig, after: MeshConfig) -> dict[str, list[str]]:
    """Resource refs ("Kind name") added, changed and removed from `before` to `after`."""
    old, new = _dumps(before), _dumps(after)
    return {
        "added": sorted(set(new) - set(old)),
        "changed": sorted(ref for ref in set(new) & set(old) if new[ref] != old[ref]),
        "removed": sorted(set(old) - set(new)),
    }


def apply_detail(before: MeshConfig, after: MeshConfig) -> dict[str, Any]:
    """An apply's `detail`: the refs it adds, changes and removes, and the config's digest."""
    return {**config_changes(before, after), "config_sha256": config_digest(after)}


def touched(detail: Mapping[str, Any]) -> list[str]:
    """The refs an apply detail names: the record's `target`."""
    return sorted({*detail.get("added", ()), *detail.get("changed", ()), *detail.get("removed", ())})


# ---- writing ---------------------------------------------------------------------------------
def head_path(path: Path) -> Path:
    return path.with_suffix(".head")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """The writer of one trail. Nothing is read or created until the first record. Appends hold
    an exclusive lock on the file, and the chain is read again whenever the file is not as this
    writer left it (another writer, such as a second mesh started on the same folder)."""

    def __init__(self, path: Path, clock: Callable[[], str] = _utc_now) -> None:
        self.path = path
        self.head = head_path(path)
        self.clock = clock
        self.failures = 0  # records that could not be written (logged as errors)
        self._lock = threading.Lock()
        self._next: tuple[int, str] | None = None  # (seq, prev) of the next record
        self._size = -1  # the file's size after this writer's last record

    def record(
        self,
        actor: str,
        action: str,
        target: Sequence[str] | str,
        detail: Mapping[str, Any] | None = None,
        outcome: str = "ok",
    ) -> dict[str, Any] | None:
        """Append one record and fsync it; the record, or None if it could not be written
        (logged as an error: the change itself stands, only its record is missing)."""
        assert action in ACTIONS, action
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as out:
                    fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # released when the file is closed
                    if self._next is None or os.fstat(out.fileno()).st_size != self._size:
                        self._next = self._resume(out)
                    seq, prev = self._next
                    record: dict[str, Any] = {
                        "seq": seq,
                        "time": self.clock(),
                        "actor": clip(actor, 200),
                        "action": action,
                        "target": [clip(t, 200) for t in ([target] if isinstance(target, str) else target)],
                        "outcome": clip(outcome, MAX_OUTCOME),
                        "detail": plain(detail or {}),
                        "prev": prev,
                    }
                    record["hash"] = record_hash(record)
                    _append(out, (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode())
                    self._size = os.fstat(out.fileno()).st_size
                    self._next = (seq + 1, record["hash"])
                    self._write_head(seq, record["hash"])
            except Exception as exc:  # never let the record of a change undo or fail the change
                self._next = None  # read the file again next time
                self.failures += 1
                log.error("audit trail %s: %s %s by %s not recorded: %s", self.path, action, target, actor, exc)
                return None
            return record

    def _resume(self, out: BinaryIO) -> tuple[int, str]:
        """Where the chain goes on: after the last readable record, and never below the seq in
        audit.head (records cut off the end leave a gap `verify` reports, ever after)."""
        seq, prev = 0, GENESIS
        data = self.path.read_bytes()
        for line in reversed(data.split(b"\n")):
            found = parse(line)
            if found is not None:
                seq, prev = found["seq"], found["hash"]
                break
        if data and not data.endswith(b"\n"):  # a torn last line stays, but on a line of its own
            _append(out, b"\n")
        head = read_head(self.head)
        if head is not None:
            seq = max(seq, head[0])
        return seq + 1, prev

    def _write_head(self, seq: int, digest: str) -> None:
        """Replace audit.head atomically; a failure is logged (the record is written already)."""
        temp = self.head.with_suffix(".head.tmp")
        try:
            with open(temp, "wb") as out:
                _append(out, (json.dumps({"seq": seq, "hash": digest}) + "\n").encode())
            os.replace(temp, self.head)
            folder = os.open(self.head.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            log.error("audit head %s not written (%s); `interstate audit --verify` will say so", self.head, exc)


def _append(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()
    os.fsync(out.fileno())


# ---- reading ---------------------------------------------------------------------------------
def parse(line: bytes) -> dict[str, Any] | None:
    """One line as a record with exactly the record fields, or None."""
    try:
        found = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(found, dict) or set(found) != set(FIELDS):
        return None
    seq = found["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(found["hash"], str):
        return None
    return found


def read_head(path: Path) -> tuple[int, str] | None:
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        seq, digest = head["seq"], head["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(digest, str):
        return None
    return seq, digest


def lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, record or None when the line is not a readable record), in file order."""
    for number, row in enumerate(_rows(path.read_bytes()), 1):
        yield number, parse(row)


def _rows(data: bytes) -> list[bytes]:
    rows = data.split(b"\n")
    if rows[-1] == b"":  # the newline that ends the last record
        rows.pop()
    return rows


def read(path: Path, since: int = 0) -> list[dict[str, Any]]:
    """The readable records with seq > `since`, in file order; [] when there is no trail."""
    if not path.is_file():
        return []
    return [r for _, r in lines(path) if r is not None and r["seq"] > since]


@dataclass(frozen=True)
class Verification:
    records: int  # records that check out, from the first
    head: str  # hash of the last of them
    bad_seq: int | None = None  # the first seq that does not check out
    problem: str = ""  # empty when the trail is intact
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    def __str__(self) -> str:
        if self.ok:
            return f"audit trail intact: {self.records} records, chain ok" + (f" ({self.note})" if self.note else "")
        where = f" at record {self.bad_seq}" if self.bad_seq is not None else ""
        return f"audit trail broken{where}: {self.problem}"


def verify(path: Path) -> Verification:
    """Check the chain from the first record, and the end against audit.head; stop at the first
    record that does not check out."""
    if not path.is_file():
        return Verification(0, GENESIS, None, f"no audit trail at {path}")
    data = path.read_bytes()
    rows = _rows(data)
    hashes: list[str] = []
    prev = GENESIS

    def broken(seq: int | None, problem: str) -> Verification:
        return Verification(len(hashes), prev, seq, problem)

    for number, line in enumerate(rows, 1):
        expected = len(hashes) + 1
        record = parse(line)
        if record is None:
            if number == len(rows) and not data.endswith(b"\n"):
                return broken(expected, f"line {number} is cut off: not a whole record (a torn write or a truncation)")
            return broken(expected, f"line {number} is not an audit record")
        if record["seq"] != expected:
            return broken(
                expected,
                f"line {number} holds record {record['seq']} where record {expected} belongs "
                "(a record was deleted, inserted or moved)",
            )
        if record["prev"] != prev:
            return broken(
                expected,
                f"record {expected} does not follow record {expected - 1}: its prev is not that record's hash",
            )
        if record["hash"] != record_hash(record):
            return broken(expected, f"record {expected} was altered: its hash does not match its content")
        prev = record["hash"]
        hashes.append(prev)
    head = read_head(head_path(path))
    if head is None:
        if not hashes:
            return Verification(0, GENESIS)
        return broken(
            None, f"{head_path(path).name} is missing or unreadable: records cut off the end cannot be ruled out"
        )
    seq, digest = head
    if seq > len(hashes):
        return broken(
            len(hashes) + 1,
            f"records {len(hashes) + 1}..{seq} are missing from the end ({head_path(path).name} says the trail reached {seq})",
        )
    if seq >= 1 and hashes[seq - 1] != digest:
        return broken(seq, f"record {seq} is not the one {head_path(path).name} names: the trail was rewritten")
    note = "" if seq == len(hashes) else f"{head_path(path).name} is {len(hashes) - seq} record(s) behind"
    return Verification(len(hashes), prev, note=note)


def integrity(path: Path) -> str:
    """A trail's state in words, for the record of a start: 'new', 'intact, N records' or why not."""
    if not path.exists():
        return "new"
    result = verify(path)
    return f"intact, {result.records} records" if result.ok else str(result)


# ---- showing ---------------------------------------------------------------------------------
def summary(record: Mapping[str, Any]) -> str:
    """A few words from the detail that say what the change was, for `interstate audit`."""
    detail = record.get("detail") or {}
    if not isinstance(detail, Mapping):
        return ""
    action = record.get("action")
    if action == "autoscaler.scale" and detail.get("reason"):
        return str(detail["reason"])  # the algorithm's words: "results: 1 → 3, requests_per_second/replica ..."
    if action in ("replicas.scale", "autoscaler.scale") and "from" in detail:
        return f"{detail.get('from')} → {detail.get('to')}"
    if action == "fault.set":
        return str(detail.get("fault", ""))
    if action == "split.set" and isinstance(detail.get("weights"), Mapping):
        return ", ".join(f"{b} {w}%" for b, w in detail["weights"].items())
    if action == "xds.nack":
        return f"{detail.get('type')}: {detail.get('message')}"
    if action == "config.apply":
        return f"sha256 {str(detail.get('config_sha256', ''))[:12]}"
    return ""


def line(record: Mapping[str, Any]) -> str:
    """One record as one line: seq, time, actor, action, target, outcome (and a summary)."""
    target = ", ".join(record.get("target") or []) or "-"
    words = summary(record)
    return (
        f"{record['seq']:>4}  {record['time']}  {record['actor']:<20}  {record['action']:<22}  {target}  "
        f"{record['outcome']}" + (f"  ({words})" if words else "")
    )
