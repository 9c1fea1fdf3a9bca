"""The load generator: `hey` (a Debian package, `apt-get install hey`), one process per phase.

    hey -z 20s -c 40 -q 5 -o csv -H "x-policy-ctx: FEC-F101" http://127.0.0.1:8080/results

With `-o csv` hey prints one row per answered request (its columns are in HEY_COLUMNS; times in
seconds, `offset` = when the request started, from hey's own start). Requests that got no HTTP
answer at all (connection refused, timeout) are not in hey's CSV; a rehearsal compares its row
count with the ingress Envoy's own counter to show that.

`parse_hey_csv` is pure; `run_hey` runs one process under asyncio and kills it on any way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import shutil
from dataclasses import dataclass

from interstate.errors import PermanentError, TemporaryError

HEY_COLUMNS = (
    "response-time",
    "DNS+dialup",
    "DNS",
    "Request-write",
    "Response-delay",
    "Response-read",
    "status-code",
    "offset",
)
INSTALL_HINT = "install it with `apt-get install hey` (or `make install`), or give its path with --hey"


class HeyMissing(PermanentError):
    pass


class HeyFailed(TemporaryError):
    pass


@dataclass(frozen=True)
class Request:
    """One measured request (a row of hey's CSV), placed on the rehearsal's clock."""

    phase: str
    t: float  # when it started, seconds since the rehearsal began
    latency: float  # seconds, the whole request as hey saw it
    status: int
    dns_dialup: float = 0.0
    dns: float = 0.0
    request_write: float = 0.0
    response_delay: float = 0.0
    response_read: float = 0.0
    offset: float = 0.0  # hey's own offset: since the hey process started

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


CSV_FIELDS = (
    "phase",
    "t_s",
    "latency_s",
    "status",
    "dns_dialup_s",
    "dns_s",
    "request_write_s",
    "response_delay_s",
    "response_read_s",
    "hey_offset_s",
)


def parse_hey_csv(text: str, phase: str, started: float) -> list[Request]:
    """hey's `-o csv` output -> requests of `phase`, sorted by start; `started` = when that hey
    process was started on the rehearsal's clock. Raises ValueError on anything that is not
    hey's CSV (a missing column, a field that is not a number)."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        if text.strip():
            raise ValueError("hey's output has no header line")
        return []
    missing = [c for c in HEY_COLUMNS if c not in reader.fieldnames]
    if missing:
        raise ValueError(f"hey's CSV lacks column(s) {', '.join(missing)}; got {', '.join(reader.fieldnames)}")
    out = []
    for number, row in enumerate(reader, start=2):
        try:
            offset = float(row["offset"])
            out.append(
                Request(
                    phase=phase,
                    t=started + offset,
                    latency=float(row["response-time"]),
                    status=int(row["status-code"]),
                    dns_dialup=float(row["DNS+dialup"]),
                    dns=float(row["DNS"]),
                    request_write=float(row["Request-write"]),
                    response_delay=float(row["Response-delay"]),
                    response_read=float(row["Response-read"]),
                    offset=offset,
                )
            )
        except (TypeError, ValueError):
            raise ValueError(f"hey's CSV line {number} is not a measurement: {row}") from None
    out.sort(key=lambda r: r.t)
    return out


def requests_csv(requests: list[Request]) -> str:
    """The measured rows as CSV (requests.csv of a rehearsal)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in requests:
        writer.writerow(
            [
                r.phase,
                f"{r.t:.4f}",
                f"{r.latency:.4f}",
                r.status,
                f"{r.dns_dialup:.4f}",
                f"{r.dns:.4f}",
                f"{r.request_write:.4f}",
                f"{r.response_delay:.4f}",
                f"{r.response_read:.4f}",
                f"{r.offset:.4f}",
            ]
        )
    return buffer.getvalue()


def find_hey(given: str | None = None) -> str:
    """The hey binary: `given` (a path or a name on PATH), else `hey` on PATH."""
    name = given or "hey"
    found = shutil.which(name)
    if found is None:
        raise HeyMissing(f"the load generator `{name}` was not found; {INSTALL_HINT}")
    return found


def hey_command(hey: str, url: str, seconds: float, workers: int, qps: float, headers: tuple[str, ...]) -> list[str]:
    command = [hey, "-z", f"{seconds:g}s", "-c", str(workers), "-q", f"{qps:.6g}", "-o", "csv"]
    for header in headers:
        command += ["-H", header]
    return [*command, url]


async def run_hey(command: list[str], timeout: float) -> str:
    """Run one hey process and return its CSV; it is killed on a timeout, a cancellation
    (Ctrl-C) or any error, and always reaped."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}  # straight to the ingress
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
    except OSError as exc:
        raise HeyMissing(f"cannot run {command[0]} ({exc.strerror}); {INSTALL_HINT}") from None
    try:
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            raise HeyFailed(f"hey did not finish within {timeout:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-500:]
        raise HeyFailed(f"hey exited with {proc.returncode}: {tail}")
    return stdout.decode()
