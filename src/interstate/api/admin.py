"""Admin API routes: status, apply, scale, metrics. An edge: turns errors into HTTP statuses.

Every request passes `api.guard.Guard` first (Host, credential, JSON only, body size); the
routes below see only those it let in. All but /healthz need the admin token (the dashboard's
data also takes the session cookie of a sign-in link).

GET  /healthz                      200 when the control plane runs (no credential)
GET  /status                       services, replicas, ports, xDS versions, NACKs
POST /apply   {"sources": {file: yaml text}}   422 with every issue, or 200 with the changes
POST /services/{name}/scale {"replicas": n}    404 unknown service, 422 bad count
POST /services/{name}/fault {"fault": {"abort": {"percent": 50, "status": 503}} | null}
POST /services/{name}/split {"weights": {"results": 90, "results-v2": 10}}
GET  /certs                        the CA, and each proxy's SPIFFE ID, serial, expiry, rotation
GET  /metrics                      Prometheus text: xDS pushes/ACKs/NACKs, snapshot updates
GET  /audit?since=SEQ              the audit trail's records after SEQ (JSON list; see `interstate.audit`)
GET  /ingress/requests             the ingress Envoy's request counters: {"total", "completed", "2xx"}
GET  /dashboard                    the live dashboard (one page; see `api.dashboard`)
GET  /dashboard/data               its JSON: per service replicas, requests/s, 5xx share, circuit, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Iterator
from typing import Any

import httpx
import uvicorn
from prometheus_client import generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from interstate import audit
from interstate.api import dashboard, protocol
from interstate.api.guard import Guard, allowed_hosts
from interstate.config.loader import decode_sources
from interstate.core.access import Gate
from interstate.core.control import INGRESS_SERIES, MeshControl
from interstate.core.status import to_json
from interstate.errors import ConfigError, InterstateError, PermanentError, Rejected, TemporaryError, UnknownService
from interstate.model.traffic_policy import Fault
from interstate.telemetry import envoy_admin, rates
from interstate.telemetry.envoys import read_stats

log = logging.getLogger(__name__)


def issues_json(error: ConfigError) -> list[dict[str, Any]]:
    return [
        {
            "file": i.file,
            "document": i.document,
            "resource": i.resource,
            "field": i.field,
            "message": i.message,
            "text": str(i),
        }
        for i in error.issues
    ]


def invalid(what: str, exc: ValidationError) -> Response:
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}".lstrip(": ") for e in exc.errors()]
    return JSONResponse({"error": f"invalid {what}: " + "; ".join(problems)}, 422)


async def json_body(request: Request) -> Any:
    """The request's JSON; ValueError for anything else, nesting too deep for the parser included."""
    try:
        return json.loads(await request.body())
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def actor(request: Request) -> str:
    """Who asked for a change, as the audit trail names them: the credential's holder (`api.guard`)."""
    return str(getattr(request.state, "actor", "admin-api"))


# What each error of the tree (`interstate.errors`) is to an HTTP client, said once: the first
# class along the error's own that is listed here.
STATUSES: tuple[tuple[type[InterstateError], int], ...] = (
    (ConfigError, 422),  # the mesh given is invalid: every issue, nothing changed
    (UnknownService, 404),
    (Rejected, 409),  # Envoy refused the new configuration: the NACKs
    (PermanentError, 409),  # refused as asked: asking again fails the same way
    (TemporaryError, 503),  # asking again later may succeed (the control plane is restarting)
    (InterstateError, 500),
)


def status_of(exc: InterstateError) -> int:
    return next(status for kind, status in STATUSES if isinstance(exc, kind))


def error_response(exc: InterstateError, then: str = "") -> Response:
    """`exc` as the admin API answers it on every route: its status, its words (with `then`, what
    became of the mesh, when the error does not say so itself), and what it carries (the issues
    of a ConfigError, the NACKs of a Rejected)."""
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, ConfigError):
        body = {"error": "invalid mesh; nothing changed", "issues": issues_json(exc)}
    elif isinstance(exc, Rejected):
        body["nacks"] = exc.nacks
    elif then:
        body["error"] += f"; {then}"
    return JSONResponse(body, status_of(exc))


async def change(call: Awaitable[dict[str, Any]], then: str = "") -> Response:
    """Run a change of the running mesh; its errors as `error_response` says."""
    try:
        result = await call
    except InterstateError as exc:
        return error_response(exc, then)
    return JSONResponse(result)


class _Routes:
    """The admin API's handlers over one mesh (`create_app` routes to them)."""

    def __init__(self, mesh: MeshControl) -> None:
        self.mesh = mesh
        self.envoys = envoy_admin.client()  # reads Envoy admins (their sockets): the dashboard, the ingress
        self.board = dashboard.Dashboard(mesh, http=self.envoys)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def status(self, request: Request) -> Response:
        return JSONResponse(to_json(self.mesh.status().with_resilience(await self.mesh.resilience())))

    async def apply(self, request: Request) -> Response:
        try:
            body = await json_body(request)
            sources = body["sources"]
            if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected JSON {"sources": {"file name": "yaml text"}}'}, 400)
        try:
            config = decode_sources(sources, self.mesh.mesh_dir)
        except ConfigError as exc:
            log.warning("apply rejected: %d issue(s); the running mesh is unchanged", len(exc.issues))
            target = sorted({i.resource or i.file for i in exc.issues})
            self.mesh.audit.record(
                actor(request), "config.apply.rejected", target, audit.error_detail(exc), audit.refused(exc)
            )
            return error_response(exc)
        return await change(self.applied(config, actor(request)), then="the previous mesh is back in force")

    async def applied(self, config: Any, who: str) -> dict[str, Any]:
        return {"applied": True, **(await self.mesh.apply(config, actor=who))}

    async def scale(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            body = await json_body(request)
            replicas = body["replicas"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected JSON {"replicas": n}'}, 400)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 1000:
            return JSONResponse({"error": f"replicas: {replicas!r} is not valid; use an integer 0..1000"}, 422)
        return await change(self.scaled(name, replicas, actor(request)))

    async def scaled(self, name: str, replicas: int, who: str) -> dict[str, Any]:
        return {"service": name, "replicas": replicas, **(await self.mesh.scale(name, replicas, actor=who))}

    async def fault(self, request: Request) -> Response:
        """Body: {"fault": the TrafficPolicy `fault` section, or null to end the rehearsal}."""
        name = request.path_params["name"]
        try:
            body = (await json_body(request))["fault"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"error": 'expected JSON {"fault": {"abort": {"percent": 50}}} or {"fault": null}'}, 400
            )
        try:
            spec = None if body is None else Fault.model_validate(body, by_alias=True, by_name=False)
        except ValidationError as exc:
            return invalid("fault", exc)
        return await change(self.mesh.set_fault(name, spec, actor=actor(request)))

    async def split(self, request: Request) -> Response:
        """Body: {"weights": {"backend": percent, ...}} (integers summing to 100)."""
        name = request.path_params["name"]
        try:
            weights = (await json_body(request))["weights"]
            if not isinstance(weights, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected JSON {"weights": {"results": 90, "results-v2": 10}}'}, 400)
        try:
            return await change(self.mesh.set_split(name, weights, actor=actor(request)))
        except ValidationError as exc:
            return invalid("split", exc)

    async def certs(self, request: Request) -> Response:
        certs = self.mesh.certificates()
        if certs is None:
            return JSONResponse({"error": "the control plane is starting"}, 503)
        return JSONResponse(to_json(certs))

    async def metrics(self, request: Request) -> Response:
        self.mesh.refresh_metrics()
        return Response(generate_latest(self.mesh.registry), media_type="text/plain; version=0.0.4")

    async def audit_trail(self, request: Request) -> Response:
        """The audit records after ?since=SEQ (default: all), as a JSON list."""
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return JSONResponse({"error": "since: expected a record number (seq), e.g. /audit?since=12"}, 400)
        return JSONResponse(audit.read(self.mesh.audit.path, since))

    async def ingress_requests(self, request: Request) -> Response:
        """The ingress Envoy's own request counters (what `interstate rehearse` counts with)."""
        ingress = next((a for a in self.mesh.envoy_admins() if a.series == INGRESS_SERIES), None)
        if ingress is None:
            return JSONResponse({"error": "the mesh has no ingress running"}, 503)
        try:
            stats = await read_stats(self.envoys, ingress.socket, rates.INGRESS_REQUESTS)
        except (httpx.HTTPError, ValueError) as exc:
            return JSONResponse({"error": f"the ingress Envoy does not answer ({exc})"}, 503)
        return JSONResponse({name.removeprefix(rates.INGRESS_PREFIX): value for name, value in stats.items()})


def create_app(mesh: MeshControl) -> Starlette:
    api = _Routes(mesh)
    return Starlette(
        routes=[
            Route("/healthz", api.healthz),
            Route("/status", api.status),
            Route("/apply", api.apply, methods=["POST"]),
            Route("/services/{name}/scale", api.scale, methods=["POST"]),
            Route("/services/{name}/fault", api.fault, methods=["POST"]),
            Route("/services/{name}/split", api.split, methods=["POST"]),
            Route("/certs", api.certs),
            Route("/metrics", api.metrics),
            Route("/audit", api.audit_trail),
            Route("/ingress/requests", api.ingress_requests),
            Route("/dashboard", dashboard.page),
            Route("/dashboard/data", api.board.endpoint),
        ]
    )


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the mesh owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminServer:
    """The admin API on a listening socket (in standalone mode the supervisor's, held for the
    mesh's life), every request through `api.guard.Guard` with `gate`'s credentials."""

    def __init__(self, app: Starlette, sock: socket.socket, gate: Gate) -> None:
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        guarded = Guard(app, gate, allowed_hosts(self.host, self.port))
        config = uvicorn.Config(
            guarded, log_level="warning", lifespan="off", access_log=False, http=protocol.BoundedH11Protocol
        )
        self.server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
        self.sock.close()
