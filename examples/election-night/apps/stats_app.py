"""The `stats` service of the election-night example: precinct tallies as JSON.

Counts grow with time since start, as precincts report in. Each response says which replica
answered and which policy context (`x-policy-ctx`) the request carried when it reached stats,
so anyone can see the header arrive without reading logs.
"""

from __future__ import annotations

import hashlib
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CANDIDATES = ("Adams", "Baker", "Chen")
PRECINCTS = 50
STARTED = time.monotonic()


def precinct(number: int, elapsed: float) -> dict[str, object]:
    seed = hashlib.sha256(f"precinct-{number}".encode()).digest()
    reporting = min(1.0, elapsed / 60.0 + seed[0] / 512)
    votes = {name: int((200 + seed[i + 1] * 4) * reporting) for i, name in enumerate(CANDIDATES)}
    return {"precinct": f"P-{number:03d}", "reporting": round(reporting, 3), "votes": votes}


async def stats(request: Request) -> JSONResponse:
    elapsed = time.monotonic() - STARTED
    return JSONResponse(
        {
            "precincts": [precinct(n, elapsed) for n in range(1, PRECINCTS + 1)],
            "served_by": served_by(),
            "policy_ctx": request.headers.get("x-policy-ctx"),
            "request_id": request.headers.get("x-request-id"),
        }
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "served_by": served_by()})


def served_by() -> str:
    """Which replica answered: `stats-0`, or `stats-v2-0` for a canary workload."""
    return f"{os.environ.get('INTERSTATE_SERVICE', 'stats')}-{os.environ.get('INTERSTATE_REPLICA', '?')}"


app = Starlette(routes=[Route("/stats", stats), Route("/healthz", healthz)])
