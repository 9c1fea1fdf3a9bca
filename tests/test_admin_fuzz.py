"""Property: whatever body a credentialed client sends to a change of the admin API, the answer is
the API's own (2xx, or 4xx with an `error` in words), never a crash (500) — issue 11, item 5.

The requests go through the guard and the real routes, the loader included (`/apply` decodes
what it is sent); the mesh behind them accepts any valid change (it is not under test here).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any, cast

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_dashboard import FakeMesh, fake_mesh

from interstate.api import admin
from interstate.api.guard import Guard, allowed_hosts
from interstate.audit import AuditLog
from interstate.core import access
from interstate.errors import UnknownService

ROUTES = ("/apply", "/services/results/scale", "/services/results/fault", "/services/results/split")
KNOWN = {"results", "stats"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(["sources", "replicas", "fault", "weights", "abort", "delay", "percent", "status", "at"])
shaped = st.dictionaries(field_names, json_values, max_size=3)  # near what the routes expect


class AnyChange(FakeMesh):
    mesh_dir = Path("/nonexistent")
    audit = AuditLog(Path(tempfile.mkdtemp(prefix="interstate-fuzz-")) / "audit.jsonl")  # refusals are recorded

    async def apply(self, config: Any, actor: str = "") -> dict[str, Any]:
        return {"started": [], "stopped": []}

    async def scale(self, service: str, replicas: int, autoscaler: bool = False, actor: str = "") -> dict[str, Any]:
        return self._known(service)

    async def set_fault(self, service: str, fault: Any, actor: str = "") -> dict[str, Any]:
        return self._known(service)

    async def set_split(self, service: str, weights: dict[str, int], actor: str = "") -> dict[str, Any]:
        return self._known(service)

    def _known(self, service: str) -> dict[str, Any]:
        if service not in KNOWN:
            raise UnknownService(f"no service {service!r}")
        return {"started": [], "stopped": []}


def post(route: str, body: bytes) -> httpx.Response:
    async def run() -> httpx.Response:
        _, fake, http = fake_mesh()
        mesh = AnyChange(fake.replicas, fake.ingress)
        door = access.Gate("t" * 43)
        app = Guard(admin.create_app(cast(Any, mesh)), door, allowed_hosts("127.0.0.1", 15000))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:15000") as client:
            headers = {"authorization": f"Bearer {door.token}", "content-type": "application/json"}
            response = await client.post(route, content=body, headers=headers)
        await http.aclose()
        return response

    return asyncio.run(run())


def assert_answered(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert isinstance(response.json().get("error"), str)


FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(ROUTES), st.one_of(json_values, shaped))
@example("/services/results/fault", {"fault": {"abort": {"percent": 1e308}}})
@example("/services/results/split", {"weights": {"results": 10**30}})
@example("/apply", {"sources": {"m.yaml": "a: &a [*a]"}})
@example("/apply", {"sources": {"\x00": "kind: Workload"}})
def test_any_json_body_gets_an_answer(route: str, body: Any) -> None:
    assert_answered(post(route, json.dumps(body).encode()))


@FUZZ
@given(st.sampled_from(ROUTES), st.binary(max_size=200))
@example("/services/results/scale", b"[" * 3_000)  # nesting past Python's recursion limit
@example("/services/results/scale", b'{"replicas": 1e999}')
@example("/apply", b'{"sources": {"a": "\\ud800"}}')  # a lone surrogate
def test_any_bytes_get_an_answer(route: str, body: bytes) -> None:
    assert_answered(post(route, body))
