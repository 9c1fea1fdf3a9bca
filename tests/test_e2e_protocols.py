"""End to end, issue 12: what services speak reaches them through the mesh.

Real `interstate up`, real Envoys and apps on 127.0.0.1. Starts with the mesh that names no
policy ID at all (the `Mesh` document is optional), which did not start: Envoy refused the
ingress's guard regex `(?!)`, and the error said "the previous one is in force" though there
was none.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from mesh_runner import EXAMPLE, running_mesh

pytestmark = pytest.mark.e2e


def test_a_mesh_that_names_no_policy_id_starts_and_adds_no_policy_header(tmp_path: Path) -> None:
    plain = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, plain)
    gateway = (plain / "mesh.yaml").read_text().split("---\n", 1)[1]  # keep the Gateway only
    (plain / "mesh.yaml").write_text(gateway)
    for name in ("results.yaml", "stats.yaml"):
        text = (plain / name).read_text()
        (plain / name).write_text("\n".join(line for line in text.splitlines() if "/policy:" not in line) + "\n")
    with running_mesh(plain, tmp_path / "run") as mesh:
        answer = httpx.get(mesh.ingress + "/results", trust_env=False, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["stats"]["policy_ctx_seen"] is None
        # a client's own header is an ordinary header here: passed on, not judged
        sent = httpx.get(mesh.ingress + "/results", headers={"x-policy-ctx": "ANY-1"}, trust_env=False, timeout=10)
        assert sent.status_code == 200 and sent.json()["stats"]["policy_ctx_seen"] == "ANY-1"
