"""Settings of one running mesh, built once by the CLI (or a test) and passed down.

Port 0 means "pick a free port". The demo defaults are fixed, documented numbers; `auto_ports()`
gives every port 0 so several meshes can run side by side (tests, scripts).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from interstate.compile.limits import MAX_INGRESS_CONNECTIONS
from interstate.core.identity import IdentitySettings

DEFAULT_INGRESS_PORT = 8080
DEFAULT_ADMIN_PORT = 15000
DEFAULT_XDS_PORT = 15010


@dataclass(frozen=True)
class Settings:
    mesh_dir: Path  # relative workingDir of workloads resolve against this folder
    run_dir: Path  # logs, Envoy bootstraps, ready.json
    ingress_port: int = DEFAULT_INGRESS_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    xds_port: int = DEFAULT_XDS_PORT
    host: str = "127.0.0.1"  # everything listens on loopback only
    envoy_path: str | None = None
    envoy_log_level: str = "warning"
    ready_timeout_s: float = 30.0  # a side-car or app that is not ready by then failed to start
    stop_timeout_s: float = 5.0  # SIGTERM, then SIGKILL after this long
    drain_timeout_s: float = 5.0  # how long a removed replica may finish in-flight requests
    restart_backoff_s: float = 0.25  # first restart delay of a crashed app; doubles
    restart_backoff_max_s: float = 10.0
    restart_reset_s: float = 10.0  # a run this long resets the back-off
    control_plane_backoff_s: float = 0.1  # first restart delay of a control plane that died; doubles
    ca_dir: Path = Path(".interstate/ca")  # the mesh root CA, created on first start
    ca_cert: Path | None = None  # an operator's CA instead: signing cert (+ chain to the root)
    ca_key: Path | None = None
    ca_bundle: Path | None = None  # the roots peers trust, when not the last cert of ca_cert
    cert_ttl: timedelta = timedelta(hours=24)  # workload certificates; rotated at half life
    autoscale_period_s: float = 15.0  # HorizontalPodAutoscaler sync period (Kubernetes' default)
    log_max_bytes: int = 64 * 1024 * 1024  # a log file is rotated past this (standalone.logs)
    log_keep: int = 3  # rotated files kept per log
    max_ingress_connections: int = MAX_INGRESS_CONNECTIONS  # open at once; more are closed at once
    # The mesh's own processes write with umask 077 (`up.run`): nothing in the run folder is
    # readable by another user. Apps create their own files with their operator's umask, this.
    app_umask: int = 0o022
    # Liveness: a unit that stops answering (a hung app or Envoy) leaves EDS within a few seconds
    # and is restarted after this long unresponsive; a control plane that stops answering gets
    # the admin API answered 503 for it at once, and is restarted after this long.
    unit_unresponsive_restart_s: float = 10.0
    control_plane_unresponsive_restart_s: float = 30.0
    max_replicas: int = 0  # replicas of the whole mesh at most; 0: what the machine's memory allows
    run_id: str = ""  # this mesh run (`up.take_over`): bootstrap certificates of no other run are accepted

    def identity(self) -> IdentitySettings:
        return IdentitySettings(
            self.run_dir / "certs", self.ca_dir, self.ca_cert, self.ca_key, self.ca_bundle, self.cert_ttl, self.run_id
        )

    def auto_ports(self) -> Settings:
        return replace(self, ingress_port=0, admin_port=0, xds_port=0)
