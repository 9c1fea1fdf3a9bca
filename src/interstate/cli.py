"""The `interstate` command line. An edge: builds Settings, calls config/standalone/client, and
turns errors into messages and exit codes (0 ok, 1 invalid input, 2 usage, 3 runtime failure)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import yaml

from interstate import audit as audit_trail
from interstate import config as mesh_config
from interstate.client import AdminClient, AdminError, admin_options, admin_token
from interstate.compile.limits import MAX_INGRESS_CONNECTIONS
from interstate.core import access
from interstate.errors import ConfigError, InterstateError
from interstate.kube import autoscale as kube_autoscale
from interstate.model.base import parse_duration
from interstate.rehearse.command import rehearse
from interstate.settings import DEFAULT_ADMIN_PORT, DEFAULT_INGRESS_PORT, DEFAULT_XDS_PORT, Settings

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_FAILURE = 3
MIN_CERT_TTL = timedelta(minutes=1)
DEFAULT_RUN_DIR = ".interstate/run"


def _client(admin: str, token_file: str) -> AdminClient:
    try:
        return AdminClient(admin, admin_token(token_file))
    except InterstateError as exc:
        _fail(str(exc), EXIT_USAGE)
        raise AssertionError from None  # _fail exits


def _duration(flag: str, text: str, at_least: timedelta) -> timedelta:
    """A duration flag's value (`30s`, `5m`), or exit with a usage error naming the flag."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        _fail(f"{flag}: {exc}", EXIT_USAGE)
    if value < at_least:
        _fail(f"{flag}: {text} is too short; at least {at_least.total_seconds():g}s", EXIT_USAGE)
    return value


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def _load(path: str, machine_check: Path | None = None) -> Any:
    """Load and validate mesh files; with `machine_check` (the mesh folder), also check that the
    workloads' folders and programs exist on this machine."""
    try:
        config = mesh_config.load(path)
        if machine_check is not None:
            from interstate.standalone import preflight

            preflight.check(config, machine_check)
        return config
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(f"error: {issue}", err=True)
        _fail(f"{len(exc.issues)} error(s) in {path}; nothing was started or changed", EXIT_INVALID)


@click.group()
@click.version_option(package_name="interstate")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """interstate: a service mesh with a Python control plane and Envoy side-cars."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("path", type=click.Path(exists=False))
def validate(path: str) -> None:
    """Check mesh files (a file or a folder); report every error with file, document and field.
    Also checks that each workload's folder and program exist on this machine."""
    config = _load(path, (Path(path) if Path(path).is_dir() else Path(path).parent).resolve())
    kinds: dict[str, int] = {}
    for resource in config.resources:
        kinds[resource.KIND] = kinds.get(resource.KIND, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    click.echo(f"{path}: valid ({summary})")


@main.command()
@click.argument("path", type=click.Path(exists=False))
@click.option("--ingress-port", type=int, default=DEFAULT_INGRESS_PORT, show_default=True)
@click.option("--admin-port", type=int, default=DEFAULT_ADMIN_PORT, show_default=True)
@click.option("--xds-port", type=int, default=DEFAULT_XDS_PORT, show_default=True)
@click.option("--auto-ports", is_flag=True, help="Pick free ports for everything (run meshes side by side).")
@click.option("--run-dir", type=click.Path(), default=None, help="Logs and Envoy bootstraps [.interstate/run].")
@click.option("--envoy", "envoy_path", envvar="INTERSTATE_ENVOY", default=None, help="Envoy binary to use.")
@click.option("--envoy-log-level", default="warning", show_default=True)
@click.option(
    "--ca-dir",
    type=click.Path(),
    default=".interstate/ca",
    show_default=True,
    help="Where the mesh root CA is kept (created on first start).",
)
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Use your own CA: its certificate (then any chain up to the root).",
)
@click.option("--ca-key", type=click.Path(exists=True, dir_okay=False), default=None, help="The key of --ca-cert.")
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Roots that peers trust, if not the last certificate of --ca-cert.",
)
@click.option("--cert-ttl", default="24h", show_default=True, help="Workload certificate lifetime (rotated at half).")
@click.option(
    "--autoscale-period",
    default="15s",
    show_default=True,
    help="How often HorizontalPodAutoscalers measure and decide (at least 1s).",
)
@click.option(
    "--control-plane-restart-delay",
    default="100ms",
    show_default=True,
    help="How long the supervisor waits before restarting a control plane that died (doubles each time, up to 10s).",
)
@click.option(
    "--restart-unresponsive",
    default="10s",
    show_default=True,
    help="Restart a replica's app or Envoy that has not answered its liveness check for this long "
    "(it leaves service after 2 missed checks, ~2 s).",
)
@click.option(
    "--control-plane-restart-unresponsive",
    default="30s",
    show_default=True,
    help="Restart a control plane that has not answered the supervisor for this long (the admin API answers 503 meanwhile).",
)
@click.option(
    "--log-max-mb",
    type=click.FloatRange(min=0.001),
    default=64.0,
    show_default=True,
    help="Rotate a log file (access logs, app output) once it is this large.",
)
@click.option(
    "--log-keep", type=click.IntRange(1, 100), default=3, show_default=True, help="Rotated files kept per log."
)
@click.option(
    "--max-ingress-connections",
    type=click.IntRange(1, 1_000_000),
    default=MAX_INGRESS_CONNECTIONS,
    show_default=True,
    help="Client connections the ingress holds open at once; past it a new one is closed as it is accepted.",
)
@click.option(
    "--max-replicas",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Replicas of the whole mesh at most (default: what 75% of this machine's memory holds at 40 MB a replica).",
)
def up(
    path: str,
    ingress_port: int,
    admin_port: int,
    xds_port: int,
    auto_ports: bool,
    run_dir: str | None,
    envoy_path: str | None,
    envoy_log_level: str,
    ca_dir: str,
    ca_cert: str | None,
    ca_key: str | None,
    ca_bundle: str | None,
    cert_ttl: str,
    autoscale_period: str,
    control_plane_restart_delay: str,
    log_max_mb: float,
    log_keep: int,
    max_ingress_connections: int,
    max_replicas: int | None,
    restart_unresponsive: str,
    control_plane_restart_unresponsive: str,
) -> None:
    """Validate PATH, then run the mesh on this machine until Ctrl-C or SIGTERM."""
    mesh_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    config = _load(path, mesh_dir.resolve())
    if (ca_cert is None) != (ca_key is None):
        _fail("--ca-cert and --ca-key go together", EXIT_USAGE)
    durations = {
        "--cert-ttl": (cert_ttl, MIN_CERT_TTL),
        "--autoscale-period": (autoscale_period, timedelta(seconds=1)),
        "--control-plane-restart-delay": (control_plane_restart_delay, timedelta(0)),
        "--restart-unresponsive": (restart_unresponsive, timedelta(0)),
        "--control-plane-restart-unresponsive": (control_plane_restart_unresponsive, timedelta(0)),
    }
    ttl, period, cp_delay, unit_silence, cp_silence = (_duration(flag, *given) for flag, given in durations.items())
    settings = Settings(
        mesh_dir=mesh_dir.resolve(),
        run_dir=Path(run_dir or DEFAULT_RUN_DIR).resolve(),
        ingress_port=ingress_port,
        admin_port=admin_port,
        xds_port=xds_port,
        envoy_path=envoy_path,
        envoy_log_level=envoy_log_level,
        ca_dir=Path(ca_dir).resolve(),
        ca_cert=Path(ca_cert).resolve() if ca_cert else None,
        ca_key=Path(ca_key).resolve() if ca_key else None,
        ca_bundle=Path(ca_bundle).resolve() if ca_bundle else None,
        cert_ttl=ttl,
        autoscale_period_s=period.total_seconds(),
        control_plane_backoff_s=cp_delay.total_seconds(),
        log_max_bytes=int(log_max_mb * 1024 * 1024),
        log_keep=log_keep,
        max_ingress_connections=max_ingress_connections,
        max_replicas=max_replicas or 0,
        unit_unresponsive_restart_s=unit_silence.total_seconds(),
        control_plane_unresponsive_restart_s=cp_silence.total_seconds(),
    )
    if auto_ports:
        settings = settings.auto_ports()
    from interstate.standalone.up import run  # grpc/Envoy parts only for `up`

    def say(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    try:
        asyncio.run(run(settings, config, say))
    except ConfigError as exc:  # what only the running machine can say: ports, the replica budget
        for issue in exc.issues:
            click.echo(f"error: {issue}", err=True)
        _fail(f"{len(exc.issues)} error(s) in {path}; nothing was started", EXIT_INVALID)
    except InterstateError as exc:
        _fail(f"interstate: {exc}")
    except Exception:  # a bug: say so plainly, with the traceback, and a distinct exit code
        click.echo(traceback.format_exc(), err=True)
        _fail("interstate: stopped by an unexpected error (above); every child was stopped")


@main.command()
@click.argument("path", type=click.Path(exists=False))
@admin_options
def apply(path: str, admin: str, token_file: str) -> None:
    """Validate PATH and make it the running mesh; on any error nothing changes."""
    _load(path)  # same validation, locally first
    sources = {str(Path(name).resolve()): text for name, text in mesh_config.read_sources(path).items()}
    try:
        result = _client(admin, token_file).apply(sources)
    except AdminError as exc:
        for issue in exc.body.get("issues", []):
            click.echo(f"error: {issue['text']}", err=True)
        _fail(f"apply refused: {exc}", EXIT_INVALID if exc.status == 422 else EXIT_FAILURE)
    except InterstateError as exc:
        _fail(str(exc))
    click.echo(f"applied: started {result.get('started', [])}, stopped {result.get('stopped', [])}")


@main.command()
@click.argument("service")
@click.argument("replicas", type=click.IntRange(0, 1000))
@admin_options
def scale(service: str, replicas: int, admin: str, token_file: str) -> None:
    """Set the replica count of SERVICE in the running mesh."""
    try:
        result = _client(admin, token_file).scale(service, replicas)
    except InterstateError as exc:
        _fail(
            f"scale refused: {exc}", EXIT_INVALID if isinstance(exc, AdminError) and exc.status < 500 else EXIT_FAILURE
        )
    click.echo(f"{service}: {replicas} replica(s); started {result['started']}, stopped {result['stopped']}")


@main.command()
@admin_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(admin: str, token_file: str, as_json: bool) -> None:
    """Show services, replicas and what each Envoy has accepted."""
    try:
        data = _client(admin, token_file).status()
    except InterstateError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    boundary = data.get("boundary", {})
    plane = data.get("control_plane")
    if plane:
        ended = f", the last one {plane['last_exit']}" if plane.get("last_exit") else ""
        click.echo(f"control plane: pid {plane['pid']}, restarts {plane['restarts']}, since {plane['since']}{ended}")
    logs = data.get("logs")
    if logs:
        click.echo(
            f"logs: {logs['bytes'] / 2**20:.1f} MiB in {logs['files']} files (at most {logs['limit_bytes'] / 2**20:.0f} MiB; "
            f"{logs['rotations']} rotations)"
        )
    budget = data.get("budget")
    if budget:
        now = f"{budget['measured_mb']:.0f} MB a replica now" if budget.get("measured_mb") else "none measured yet"
        click.echo(
            f"replicas: {budget['replicas']} of a budget of {budget['max_replicas']} "
            f"({now}; planned at {budget['planned_mb']} MB)"
        )
    if data.get("ingress"):
        odd = ", ".join(f"{n} {what}" for what, n in boundary.get("policy_headers", {}).items() if n)
        click.echo(f"ingress {data['ingress']['url']}" + (f" (policy header: {odd})" if odd else ""))
    stripped = [f"{s['header']} ({s['side']}) x{s['count']}" for s in boundary.get("headers_stripped", [])]
    if stripped:
        click.echo("headers stripped at the boundary: " + ", ".join(stripped))
    for call in boundary.get("undeclared_hosts", []):
        click.echo(f"undeclared host: {call['service']} -> {call['host']}: {call['outcome']} x{call['count']}")
    for name, scaler in data.get("autoscaling", {}).get("autoscalers", {}).items():
        last = scaler.get("last") or {}
        click.echo(f"autoscaler {name}: {last.get('reason', 'no decision yet')}")
        for change in scaler.get("changes", [])[-3:]:
            click.echo(f"  {change['at']}: {change['reason']}")
    for name, svc in data["services"].items():
        mtls = svc["mtls"] if svc["mtls"] != "PERMISSIVE" else "PERMISSIVE (plaintext accepted!)"
        click.echo(
            f"{name}: {svc['ready']}/{svc['desired']} ready, policy {svc['policy'] or '-'}, mTLS {mtls}"
            + ("" if svc["injected"] else ", NOT injected")
        )
        _print_resilience(svc.get("resilience"))
        for replica in svc["replicas"]:
            xds = replica.get("xds") or {}
            types = xds.get("types", {})
            nacks = [f"{t} NACK: {v['nack']['message']}" for t, v in types.items() if v.get("nack")]
            synced = all(v["sent"] == v["acked"] for v in types.values()) if types else False
            click.echo(
                f"  {replica['name']}: {replica['state']}, app pid {replica['app']['pid']}, "
                f"restarts {replica['app']['restarts']}, xds {'synced' if synced else 'pending'}"
            )
            for nack in nacks:
                click.echo(f"    {nack}")


@main.command()
@click.argument("service")
@click.argument("weights", nargs=-1, required=True)
@admin_options
def split(service: str, weights: tuple[str, ...], admin: str, token_file: str) -> None:
    """Share calls to SERVICE among backends, live: `interstate split results results=50 results-v2=50`.
    A bare version suffix also works: `results v2=50` means results-v2=50 and results=50."""
    parsed: dict[str, int] = {}
    for item in weights:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            _fail(f"{item!r}: write BACKEND=PERCENT, e.g. results-v2=10", EXIT_USAGE)
        backend = name if name.startswith(service) else f"{service}-{name}"
        parsed[backend] = int(value)
    if len(parsed) == 1:  # one canary weight given: the service itself takes the rest
        ((backend, percent),) = parsed.items()
        if backend != service and percent <= 100:
            parsed = {service: 100 - percent, backend: percent}
    try:
        _client(admin, token_file).split(service, parsed)
    except InterstateError as exc:
        _fail(
            f"split refused: {exc}", EXIT_INVALID if isinstance(exc, AdminError) and exc.status < 500 else EXIT_FAILURE
        )
    click.echo(f"{service}: " + ", ".join(f"{b} {w}%" for b, w in parsed.items()))


def _print_resilience(facts: dict[str, Any] | None) -> None:
    """What callers' side-cars saw of calls to a service, in words."""
    if not facts:
        return
    c = facts["counters"]
    click.echo(
        f"  calls: {c['requests']} requests, {c['retries']} retries ({c['retries_succeeded']} succeeded, "
        f"{c['retries_refused_by_budget']} refused by the budget), {c['pool_overflows']} pool overflows, "
        f"{c['timeouts']} timeouts, {c['connect_failures']} connect failures, {c['ejections_total']} ejections"
    )
    if facts.get("fault"):
        click.echo(f"  REHEARSAL ON: {facts['fault']}  (end it: interstate fault SERVICE --off)")
    for e in facts["ejected"]:
        click.echo(f"  EJECTED {e['replica']} ({e['host']}) since {e['since']}: {e['reason']}, by {e['by']}")
    for f in facts["recent_failures"]:
        status = f"gRPC {f['grpc']}" if f.get("grpc") else f["status"]
        click.echo(f"  failed {f['count']}x {status} {f['flags']}: {f['why']} (last {f['last']})")


@main.command()
@click.argument("service")
@click.option(
    "--abort",
    "abort_percent",
    type=click.IntRange(0, 100),
    default=None,
    help="Percent of calls to SERVICE that get --status at once.",
)
@click.option("--status", "abort_status", type=click.IntRange(200, 599), default=503, show_default=True)
@click.option("--delay", default=None, help="Added delay, e.g. 2s (with --delay-percent).")
@click.option("--delay-percent", type=click.IntRange(0, 100), default=100, show_default=True)
@click.option(
    "--in-service",
    is_flag=True,
    help="SERVICE's own side-cars fail the calls (callers see real failures; their circuit breakers trip).",
)
@click.option("--off", is_flag=True, help="End the rehearsal: calls to SERVICE behave normally again.")
@admin_options
def fault(
    service: str,
    abort_percent: int | None,
    abort_status: int,
    delay: str | None,
    delay_percent: int,
    in_service: bool,
    off: bool,
    admin: str,
    token_file: str,
) -> None:
    """Rehearse a failure of SERVICE in the running mesh (a "stats hiccup"), or end it with --off.
    Callers' side-cars abort or delay that share of calls (or, --in-service, SERVICE's own
    side-cars do); nothing restarts."""
    if off == (abort_percent is not None or delay is not None):
        _fail("give --abort and/or --delay, or --off", EXIT_USAGE)
    body: dict[str, Any] | None = None
    if not off:
        body = {}
        if abort_percent is not None:
            body["abort"] = {"percent": abort_percent, "status": abort_status}
        if delay is not None:
            body["delay"] = {"percent": delay_percent, "fixedDelay": delay}
        if in_service:
            body["at"] = "SERVICE"
    try:
        _client(admin, token_file).fault(service, body)
    except InterstateError as exc:
        _fail(
            f"fault refused: {exc}", EXIT_INVALID if isinstance(exc, AdminError) and exc.status < 500 else EXIT_FAILURE
        )
    if off:
        click.echo(f"{service}: rehearsal off; calls behave normally")
    else:
        parts = []
        if abort_percent is not None:
            parts.append(f"{abort_percent}% get {abort_status}")
        if delay is not None:
            parts.append(f"{delay_percent}% delayed {delay}")
        where = f" (by {service}'s own side-cars)" if in_service else ""
        click.echo(f"{service}: rehearsal on: {', '.join(parts)} of calls{where}")


@main.command()
@admin_options
def dashboard(admin: str, token_file: str) -> None:
    """Print a sign-in link for the dashboard (valid 10 minutes, once): a browser that opens it
    gets a read-only session for 12 hours."""
    code = access.login_code(_client(admin, token_file).token, access.LINK_TTL_S)
    click.echo(f"{admin.rstrip('/')}/dashboard?{access.LOGIN_PARAM}={code}")


@main.command()
@admin_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def certs(admin: str, token_file: str, as_json: bool) -> None:
    """Each proxy's workload certificate: SPIFFE ID, serial, expiry, time to rotation."""
    try:
        data = _client(admin, token_file).certs()
    except InterstateError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    authority = data["ca"]
    click.echo(
        f"CA {authority['fingerprint']} (trust domain {authority['trust_domain']}), "
        f"{authority['issued']} certificates issued"
    )
    for cert in data["certs"]:
        click.echo(
            f"{cert['node']:24} {cert['spiffe_id']:50} serial {cert['serial'][:16]} "
            f"not after {cert['not_after']}  rotates in {cert['rotates_in_s']:.0f}s"
        )


@main.command()
@click.option("--run-dir", type=click.Path(), default=DEFAULT_RUN_DIR, show_default=True)
@click.option("--timeout", "timeout_s", type=click.IntRange(1, 3600), default=120, show_default=True)
def down(run_dir: str, timeout_s: int) -> None:
    """Stop the mesh that runs from RUN_DIR: ask its `interstate up` to stop (as Ctrl-C would),
    or, if that was killed, stop the apps and Envoys it left serving."""
    import os
    import signal
    import time

    from interstate.standalone import adoption

    folder = Path(run_dir).resolve()
    pid = adoption.live_supervisor(folder)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while adoption.live_supervisor(folder) == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if adoption.live_supervisor(folder) == pid:
            _fail(f"interstate up (pid {pid}) did not stop within {timeout_s}s")
        click.echo(f"stopped the mesh of {folder} (interstate up, pid {pid})")
        return
    found = adoption.survey(folder)
    for item in found:
        adoption.terminate(item.pids)
    adoption.forget(folder)
    (folder / "ready.json").unlink(missing_ok=True)
    if found:
        click.echo(f"stopped {len(found)} unit(s) left running in {folder}: {', '.join(f.unit.name for f in found)}")
    else:
        click.echo(f"nothing runs from {folder}")


@main.command("audit")
@click.option("--run-dir", type=click.Path(), default=DEFAULT_RUN_DIR, show_default=True, help="The mesh's run folder.")
@click.option("--verify", is_flag=True, help="Check the hash chain; exit 1 naming the first broken record.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N records.")
def audit_command(run_dir: str, verify: bool, as_json: bool, last: int | None) -> None:
    """Who changed what in the mesh, when, and whether it took effect: RUN_DIR/audit.jsonl, read
    directly (the mesh may be stopped)."""
    path = Path(run_dir) / audit_trail.FILE_NAME
    if not path.is_file():
        _fail(f"no audit trail at {path}; `interstate up` writes one in its --run-dir", EXIT_INVALID)
    if verify:
        result = audit_trail.verify(path)
        if not result.ok:
            _fail(str(result), EXIT_INVALID)
        click.echo(str(result))
        click.echo(f"head {result.head} (keep it elsewhere: a trail rewritten from the start cannot match it)")
        return
    rows = list(audit_trail.lines(path))[-last:] if last else list(audit_trail.lines(path))
    if as_json:
        click.echo(json.dumps([record for _, record in rows if record is not None], indent=2, ensure_ascii=False))
        return
    for number, record in rows:
        click.echo(audit_trail.line(record) if record else f"   ?  line {number}: not a readable record (--verify)")


@main.group()
def ca() -> None:
    """The mesh certificate authority."""


@ca.command("show")
@click.option("--ca-dir", type=click.Path(), default=".interstate/ca", show_default=True)
@click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False), default=None)
def ca_show(ca_dir: str, ca_cert: str | None) -> None:
    """The root's SHA-256 fingerprint, subject and expiry (from the files; no mesh needed)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    path = Path(ca_cert) if ca_cert else Path(ca_dir) / "ca.pem"
    if not path.is_file():
        _fail(f"no CA at {path}; `interstate up` creates one on first start", EXIT_INVALID)
    chain = x509.load_pem_x509_certificates(path.read_bytes())
    root = chain[-1]
    click.echo(f"root        {root.subject.rfc4514_string()}")
    click.echo(f"fingerprint SHA256 {root.fingerprint(hashes.SHA256()).hex(':')}")
    click.echo(f"not after   {root.not_valid_after_utc.isoformat()}")
    if len(chain) > 1:
        click.echo(f"signing     {chain[0].subject.rfc4514_string()} (intermediate)")


@main.group()
def manifests() -> None:
    """Kubernetes manifests for the mesh, printed as YAML (nothing is applied)."""


@manifests.command("autoscale")
@click.argument("config_dir", type=click.Path(exists=False))
@click.option(
    "--prometheus",
    default=kube_autoscale.DEFAULT_PROMETHEUS,
    show_default=True,
    help="Prometheus URL for KEDA's request-rate triggers.",
)
@click.option("--namespace", default=None, help="Namespace of the objects (and of the side-cars' metrics).")
def manifests_autoscale(config_dir: str, prometheus: str, namespace: str | None) -> None:
    """For each HorizontalPodAutoscaler in CONFIG_DIR: an autoscaling/v2 HPA on the app container's
    CPU, or a KEDA ScaledObject when it has a requests_per_second metric."""
    config = _load(config_dir)
    try:
        objects = kube_autoscale.manifests(config, prometheus=prometheus, namespace=namespace)
    except ValueError as exc:
        _fail(f"--namespace: {exc}", EXIT_USAGE)
    if not objects:
        click.echo(f"{config_dir}: no HorizontalPodAutoscaler; nothing to print", err=True)
        return
    click.echo(yaml.safe_dump_all(objects, sort_keys=False), nl=False)


@manifests.command("crds")
def manifests_crds() -> None:
    """A CustomResourceDefinition for every mesh.codifyhq.io kind (schemas from the models)."""
    from interstate.kube import crds

    click.echo(yaml.safe_dump_all(crds.crds(), sort_keys=False), nl=False)


def _ca_bundle(path: str) -> str:
    """The mesh CA's certificates a `--ca-bundle` names; exit 2 saying where they come from."""
    if not Path(path).is_file():
        _fail(f"--ca-bundle: no file {path}; `interstate up` creates the CA (or give your ca.pem)", EXIT_USAGE)
    return Path(path).read_text()


def _injection_options(command: Callable[..., None]) -> Callable[..., None]:
    """What injected side-cars are told, shared by `interstate webhook` and `interstate inject`."""
    for option in (
        click.option("--policy-header", default="x-policy-ctx", show_default=True),
        click.option("--trust-domain", default="interstate.local", show_default=True),
        click.option("--xds-address", default="interstate-xds.interstate-system.svc:15012", show_default=True),
    ):
        command = option(command)
    return command


@manifests.command("install")
@click.option("--namespace", default="interstate-system", show_default=True, help="Namespace of the control plane.")
def manifests_install(namespace: str) -> None:
    """The mesh's objects for `kubectl apply -f -`: its CRDs, namespace, and the controller's
    ServiceAccount with least-privilege RBAC (the Deployment, webhooks and ingress are to follow)."""
    from interstate.kube import install

    click.echo(yaml.safe_dump_all(install.manifests(namespace), sort_keys=False), nl=False)


@manifests.command("webhook")
@click.option(
    "--ca-bundle",
    type=click.Path(dir_okay=False),
    default=".interstate/ca/ca.pem",
    show_default=True,
    help="The mesh CA's certificate(s); the API server checks the webhook's certificate against them.",
)
@click.option("--namespace", default="interstate-system", show_default=True, help="Namespace of the webhook Service.")
@click.option("--service", default="interstate-webhook", show_default=True, help="Name of the webhook Service.")
def manifests_webhook(ca_bundle: str, namespace: str, service: str) -> None:
    """The MutatingWebhookConfiguration that sends pods of namespaces labelled
    mesh.codifyhq.io/inject=enabled to `interstate webhook`, and the ValidatingWebhookConfiguration
    that sends it every creation and update of a mesh resource."""
    from interstate.kube import webhook

    bundle = _ca_bundle(ca_bundle)
    configs = [
        webhook.mutating_webhook_configuration(bundle, service=service, namespace=namespace),
        webhook.validating_webhook_configuration(bundle, service=service, namespace=namespace),
    ]
    click.echo(yaml.safe_dump_all(configs, sort_keys=False), nl=False)


@main.command("inject")
@click.option(
    "-f", "--filename", "source", required=True, help="The manifests (YAML, several documents), or - for stdin."
)
@click.option(
    "--ca-bundle",
    type=click.Path(dir_okay=False),
    default=".interstate/ca/ca.pem",
    show_default=True,
    help="The mesh CA's certificate(s), which injected side-cars check the control plane against.",
)
@_injection_options
def inject_command(source: str, ca_bundle: str, trust_domain: str, xds_address: str, policy_header: str) -> None:
    """Print the manifests with a side-car injected into every pod (template) that asks for the
    mesh, exactly as the webhook would (like `istioctl kube-inject`); what was done goes to stderr."""
    from interstate.kube.inject import InjectionRefused, InjectSettings
    from interstate.kube.workloads import inject_documents

    bundle = _ca_bundle(ca_bundle)
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        _fail(f"{source}: cannot read the manifests: {exc}", EXIT_INVALID)
    try:
        settings = InjectSettings(
            ca_bundle_pem=bundle,
            trust_domain=trust_domain,
            xds_address=xds_address,
            policy_header=policy_header,
        )
        injected, said = inject_documents(documents, settings)
    except (InjectionRefused, ValueError) as exc:
        _fail(f"{source}: {exc}", EXIT_INVALID)
    for line in said:
        click.echo(line, err=True)
    click.echo(yaml.safe_dump_all(injected, sort_keys=False), nl=False)


@main.command("controller")
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Reach the API server as this kubeconfig says (default: in a pod, its service account).",
)
@click.option("--context", default=None, help="The kubeconfig context (default: its current one).")
@click.option("--xds-host", default="0.0.0.0", show_default=True, help="Where side-cars reach the xDS server.")
@click.option("--xds-port", type=click.IntRange(0, 65535), default=15012, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=".interstate/controller",
    show_default=True,
    help="Kept certificates and the audit trail (and the mesh CA, with --ca-secret '').",
)
@click.option(
    "--lease-namespace",
    default="interstate-system",
    show_default=True,
    help="Where the replicas' Lease lives (the one holding it writes status); '' for a single replica.",
)
@click.option("--identity", default=None, help="This replica's name in the Lease (default: host name and pid).")
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Only this namespace's pods, EndpointSlices and mesh resources (repeat for several; default: all).",
)
@click.option(
    "--ca-secret",
    default="interstate-ca",
    show_default=True,
    help="The Secret (in --lease-namespace; cert-manager's tls.crt/tls.key/ca.crt) holding the mesh CA "
    "every replica signs with; created at first start. '' for the CA of --state-dir.",
)
def controller_command(
    kubeconfig: str | None,
    context: str | None,
    xds_host: str,
    xds_port: int,
    state_dir: str,
    lease_namespace: str,
    identity: str | None,
    namespaces: tuple[str, ...],
    ca_secret: str,
) -> None:
    """Run the control plane for a Kubernetes cluster: watch its pods, EndpointSlices and mesh
    resources, serve xDS to injected side-cars, write the resources' status."""
    import asyncio
    import dataclasses
    import os

    from interstate.core.identity import IdentitySettings
    from interstate.kube.controller import ControllerSettings
    from interstate.kube.lease import LeaseSettings
    from interstate.kube.run import serve
    from interstate.kube.watch import ApiSettings

    state = Path(state_dir)
    try:
        if kubeconfig is not None:
            api = ApiSettings.from_kubeconfig(Path(kubeconfig), state / "kubeconfig", context)
        else:
            api = ApiSettings.in_cluster(os.environ)
    except (ValueError, InterstateError) as exc:
        _fail(str(exc), EXIT_USAGE)
    settings = ControllerSettings(
        api,
        xds_host=xds_host,
        xds_port=xds_port,
        lease=LeaseSettings(lease_namespace) if lease_namespace else None,
        namespaces=namespaces,
        ca_secret=(lease_namespace, ca_secret) if ca_secret and lease_namespace else None,
    )
    if identity:
        settings = dataclasses.replace(settings, identity=identity)
    identity_settings = IdentitySettings(state / "certs", state / "ca")
    asyncio.run(serve(settings, identity_settings, state / "audit.jsonl"))


@main.command("webhook")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True)
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), default=None, help="HTTPS certificate chain.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), default=None, help="The key of --cert.")
@click.option(
    "--ca-dir",
    type=click.Path(),
    default=".interstate/ca",
    show_default=True,
    help="The mesh CA: its ca.pem is what side-cars trust; without --cert/--key it issues the webhook's certificate.",
)
@_injection_options
@click.option("--proxy-image", default="docker.io/envoyproxy/envoy:v1.40.0", show_default=True)
@click.option("--legacy-sidecar", is_flag=True, help="Append the side-car to containers (Kubernetes < 1.29).")
def webhook_command(
    host: str,
    port: int,
    cert: str | None,
    key: str | None,
    ca_dir: str,
    xds_address: str,
    proxy_image: str,
    trust_domain: str,
    policy_header: str,
    legacy_sidecar: bool,
) -> None:
    """Serve the side-car injection webhook (POST /inject) over HTTPS until Ctrl-C."""
    import tempfile

    from interstate.ca.authority import utcnow
    from interstate.kube import inject, webhook

    if (cert is None) != (key is None):
        _fail("--cert and --key go together", EXIT_USAGE)
    bundle = Path(ca_dir) / "ca.pem"
    if not bundle.is_file():
        _fail(f"--ca-dir: no {bundle}; `interstate up` creates the CA on first start", EXIT_USAGE)
    try:
        settings = inject.InjectSettings(
            ca_bundle_pem=bundle.read_text(),
            proxy_image=proxy_image,
            xds_address=xds_address,
            trust_domain=trust_domain,
            policy_header=policy_header,
            native_sidecar=not legacy_sidecar,
        )
    except ValueError as exc:
        _fail(f"webhook: {exc}", EXIT_USAGE)
    try:
        with tempfile.TemporaryDirectory(prefix="interstate-webhook-") as workdir:
            if cert is not None and key is not None:
                server = webhook.server(settings, cert_file=Path(cert), key_file=Path(key), host=host, port=port)
            else:
                server = webhook.serve_with_ca(
                    settings, ca_dir=Path(ca_dir), host=host, port=port, now=utcnow(), workdir=Path(workdir)
                )
            click.echo(f"interstate: injection webhook on https://{host}:{port}/inject")
            sys.stdout.flush()
            server.run()
    except InterstateError as exc:
        _fail(f"interstate: {exc}")


main.add_command(rehearse)

if __name__ == "__main__":
    main()
