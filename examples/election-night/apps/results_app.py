"""The `results` service of the election-night example: aggregates stats' precinct tallies.

It calls `http://stats:8080/stats` as if stats were a plain host: the side-car (its HTTP_PROXY)
routes the call, adds mTLS and retries, and stamps `x-policy-ctx` when the request has none.
This code never sets that header; `interstate.propagation` forwards the one the request came
with, so a client's policy context reaches stats unchanged.
"""

from __future__ import annotations

import os

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from interstate.propagation import PropagationMiddleware, httpx_hooks

STATS_URL = os.environ.get("STATS_URL", "http://stats:8080")


def aggregate(precincts: list[dict]) -> dict[str, object]:
    totals: dict[str, int] = {}
    for p in precincts:
        for name, votes in p["votes"].items():
            totals[name] = totals.get(name, 0) + votes
    cast = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "candidates": [
            {"name": n, "votes": v, "percent": round(100 * v / cast, 2) if cast else 0.0} for n, v in ranked
        ],
        "leader": ranked[0][0] if cast else None,
        "votes_cast": cast,
        "precincts": len(precincts),
        "precincts_fully_reporting": sum(1 for p in precincts if p["reporting"] >= 1.0),
    }


async def results(request: Request) -> JSONResponse:
    client: httpx.AsyncClient = request.app.state.client
    response = await client.get(f"{STATS_URL}/stats")
    if response.status_code == 503:  # stats is down or its circuit is open: say so, at once
        return JSONResponse({"error": "stats unavailable (circuit open)", "stats_status": 503}, status_code=503)
    if response.status_code != 200:
        return JSONResponse({"error": "stats unavailable", "stats_status": response.status_code}, status_code=502)
    data = response.json()
    return JSONResponse(
        {
            **aggregate(data["precincts"]),
            "served_by": f"{os.environ.get('INTERSTATE_SERVICE', 'results')}-{os.environ.get('INTERSTATE_REPLICA', '?')}",
            "stats": {"served_by": data["served_by"], "policy_ctx_seen": data["policy_ctx"]},
        }
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[Route("/results", results), Route("/healthz", healthz)],
    middleware=[Middleware(PropagationMiddleware)],
)
# One pooled client per process; httpx reads HTTP_PROXY (the side-car) from the environment.
app.state.client = httpx.AsyncClient(timeout=10.0, event_hooks=httpx_hooks())
