"""`interstate rehearse`: drive the election-night scenario against the running mesh and report.

    interstate rehearse                       # 5 phases of 20 s: 10 rps, 200, 200 + stats hiccup, 200, 10
    interstate rehearse --short               # about 20 s in all, low rates (tests, a quick look)
    interstate rehearse --baseline-rps 20 --surge 20 --phase-seconds 30 --out /tmp/night

Progress goes to stderr once a second; the text report to stdout; report.txt, report.html (inline
SVG charts), report.json and requests.csv (hey's rows) to --out. Exit codes as elsewhere: 0 done,
2 usage, 3 the mesh or the load generator failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from interstate.client import admin_options, admin_token
from interstate.errors import InterstateError
from interstate.rehearse import report
from interstate.rehearse.load import find_hey, requests_csv
from interstate.rehearse.runner import RehearsalRunner
from interstate.rehearse.scenario import DEFAULT_HEADERS, DEFAULT_PATH, MAX_WORKER_QPS, SHORT, Hiccup, Scenario

EXIT_USAGE = 2
EXIT_FAILURE = 3
FULL = Scenario()


def write_reports(rehearsal: report.Rehearsal, out: Path) -> dict[str, Path]:
    """report.txt, report.html, report.json and requests.csv in `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report.txt": report.render_text(rehearsal),
        "report.html": report.render_html(rehearsal),
        "report.json": json.dumps(report.summary(rehearsal), indent=2) + "\n",
        "requests.csv": requests_csv(rehearsal.requests),
    }
    paths = {}
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        paths[name] = path
    return paths


@click.command()
@admin_options
@click.option("--short", is_flag=True, help=f"Quick preset: {SHORT.describe()}.")
@click.option("--baseline-rps", type=click.FloatRange(min=0.1), default=None, help="Baseline rate [10; --short 4].")
@click.option("--surge", type=click.FloatRange(min=1), default=None, help="Surge = baseline × this [20].")
@click.option(
    "--phase-seconds", type=click.FloatRange(min=1), default=None, help="Length of each phase [20; --short 3]."
)
@click.option("--fault-service", default="stats", show_default=True, help="The service that hiccups.")
@click.option(
    "--fault-abort", type=click.IntRange(1, 100), default=50, show_default=True, help="Percent of calls aborted."
)
@click.option("--fault-status", type=click.IntRange(200, 599), default=503, show_default=True)
@click.option("--path", "path", default=DEFAULT_PATH, show_default=True, help="What to GET at the ingress.")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    help=f"Request header(s) [{DEFAULT_HEADERS[0]}]; repeat for more.",
)
@click.option(
    "--max-worker-qps",
    type=click.FloatRange(min=0.1),
    default=MAX_WORKER_QPS,
    show_default=True,
    help="Rate per hey worker (-q); workers = rate / this.",
)
@click.option("--hey", "hey_path", envvar="INTERSTATE_HEY", default=None, help="The hey binary [hey on PATH].")
@click.option(
    "--out", type=click.Path(file_okay=False), default=".interstate/rehearsal", show_default=True, help="Report folder."
)
def rehearse(
    admin: str,
    token_file: str,
    short: bool,
    baseline_rps: float | None,
    surge: float | None,
    phase_seconds: float | None,
    fault_service: str,
    fault_abort: int,
    fault_status: int,
    path: str,
    headers: tuple[str, ...],
    max_worker_qps: float,
    hey_path: str | None,
    out: str,
) -> None:
    """Rehearse election night against the running mesh: baseline, a 20× surge, a stats hiccup
    during the surge, recovery, cool-down; then a report of what was measured."""
    preset = SHORT if short else FULL
    try:
        scenario = Scenario(
            baseline_rps=baseline_rps if baseline_rps is not None else preset.baseline_rps,
            surge=surge if surge is not None else preset.surge,
            phase_seconds=phase_seconds if phase_seconds is not None else preset.phase_seconds,
            fault=Hiccup(fault_service, fault_abort, fault_status),
            path=path,
            headers=headers or DEFAULT_HEADERS,
            max_worker_qps=max_worker_qps,
        )
    except ValueError as exc:
        click.echo(f"rehearse: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    for header in scenario.headers:
        if ":" not in header:
            click.echo(f"rehearse: --header {header!r}: write it as 'name: value'", err=True)
            sys.exit(EXIT_USAGE)

    def say(line: str) -> None:
        click.echo(line, err=True)

    try:
        hey = find_hey(hey_path)
        say(f"rehearsal: {scenario.describe()}")
        rehearsal = asyncio.run(RehearsalRunner(admin, admin_token(token_file), scenario, hey, say).run())
    except InterstateError as exc:
        click.echo(f"rehearse: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except asyncio.CancelledError:  # SIGTERM
        click.echo("rehearse: stopped before the end (hey stopped, no fault left on); no report", err=True)
        sys.exit(EXIT_FAILURE)
    paths = write_reports(rehearsal, Path(out))
    click.echo(report.render_text(rehearsal), nl=False)
    say(f"reports: {', '.join(str(p) for p in paths.values())}")
