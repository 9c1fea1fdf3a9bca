"""End-to-end: the audit trail of a real `interstate up` (election-night, real Envoys and apps).

Changes made with the command line and the admin API, accepted and refused, appear in the trail
in order with their actor and outcome; after the mesh stopped `interstate audit --verify` finds
the chain intact, and names the record someone edited afterwards."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from mesh_runner import cli, running_mesh

from interstate import config as mesh_config

pytestmark = pytest.mark.e2e

API = f"{pwd.getpwuid(os.getuid()).pw_name} (admin token)"  # who holds the token, not an address


def test_the_trail_says_who_changed_what_and_whether_it_took_effect(tmp_path: Path, mesh_copy: Path) -> None:
    run_dir = tmp_path / "run"
    policy = mesh_copy / "stats-destination.yml"
    mesh_file = mesh_copy / "mesh.yaml"
    with running_mesh(mesh_copy, run_dir) as mesh:
        admin = ["--admin", mesh.admin]
        policy.write_text(policy.read_text().replace("consecutiveErrors: 3", "consecutiveErrors: 5"))
        applied = cli("apply", str(mesh_copy), *admin)
        assert applied.returncode == 0, applied.stderr

        # `interstate apply` refuses an invalid file before sending it; a script posting it is refused
        # by the mesh, and that is recorded
        policy.write_text(policy.read_text().replace("consecutiveErrors: 5", "consecutiveErrors: -3"))
        sources = {str(Path(n).resolve()): t for n, t in mesh_config.read_sources(str(mesh_copy)).items()}
        invalid = mesh.api("POST", "/apply", json={"sources": sources}, timeout=30)
        assert invalid.status_code == 422
        policy.write_text(policy.read_text().replace("consecutiveErrors: -3", "consecutiveErrors: 5"))

        # valid on its own, refused by the running mesh
        original = mesh_file.read_text()
        mesh_file.write_text(original.replace("policyHeader: x-policy-ctx", "policyHeader: x-policy-id"))
        refused = cli("apply", str(mesh_copy), *admin)
        assert refused.returncode == 3 and "policyHeader cannot change" in refused.stderr
        mesh_file.write_text(original)

        assert cli("scale", "stats", "2", *admin).returncode == 0
        assert cli("scale", "results", "5", *admin).returncode == 1  # its autoscaler owns the count
        assert cli("fault", "stats", "--abort", "10", *admin).returncode == 0
        assert cli("fault", "stats", "--off", *admin).returncode == 0

        live = mesh.api("GET", "/audit", params={"since": 1}).json()
        assert [r["seq"] for r in live][:1] == [2]

    path = run_dir / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    events = [
        (r["actor"], r["action"], r["target"], r["outcome"].split(":")[0])
        for r in records
        if r["action"] != "autoscaler.scale"  # (none expected without traffic; not this test's subject)
    ]
    assert events == [
        ("interstate up", "mesh.start", ["results", "stats"], "ok"),
        (API, "config.apply", ["TrafficPolicy stats-breaker"], "ok"),
        (API, "config.apply.rejected", ["TrafficPolicy stats-breaker"], "refused"),
        (API, "config.apply.rejected", ["Mesh election-night"], "refused"),
        (API, "replicas.scale", ["stats"], "ok"),
        (API, "replicas.scale", ["results"], "refused"),
        (API, "fault.set", ["stats"], "ok"),
        (API, "fault.clear", ["stats"], "ok"),
        ("interstate up", "mesh.stop", ["results", "stats"], "ok"),
    ]
    by_action = {(r["action"], r["target"][0]): r for r in records}
    start = by_action["mesh.start", "results"]
    assert start["detail"]["trail_before"] == "new"
    assert sorted(start["detail"]["replicas"]) == ["results-0", "results-1", "stats-0"]
    apply = by_action["config.apply", "TrafficPolicy stats-breaker"]
    assert apply["detail"]["changed"] == ["TrafficPolicy stats-breaker"]
    assert len(apply["detail"]["config_sha256"]) == 64
    invalid_apply = by_action["config.apply.rejected", "TrafficPolicy stats-breaker"]
    assert "spec.outlierDetection.consecutiveErrors" in invalid_apply["detail"]["issues"][0]
    header = by_action["config.apply.rejected", "Mesh election-night"]
    assert "policyHeader cannot change" in header["outcome"]
    scale = by_action["replicas.scale", "stats"]
    assert (scale["detail"]["from"], scale["detail"]["to"], scale["detail"]["started"]) == (1, 2, ["stats-1"])
    assert "HorizontalPodAutoscaler results-hpa" in by_action["replicas.scale", "results"]["outcome"]
    assert by_action["fault.set", "stats"]["detail"]["fault"].startswith("10% of calls get 503")

    verified = cli("audit", "--run-dir", str(run_dir), "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"audit trail intact: {len(records)} records, chain ok\n")
    listed = cli("audit", "--run-dir", str(run_dir))
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert len(lines) == len(records)
    assert "replicas.scale" in lines[scale["seq"] - 1] and "stats  ok  (1 → 2)" in lines[scale["seq"] - 1]

    # someone makes the refused scale look accepted
    refused_scale = by_action["replicas.scale", "results"]
    text = path.read_text().splitlines(keepends=True)
    edited = json.loads(text[refused_scale["seq"] - 1]) | {"outcome": "ok"}
    text[refused_scale["seq"] - 1] = json.dumps(edited) + "\n"
    path.write_text("".join(text))
    broken = cli("audit", "--run-dir", str(run_dir), "--verify")
    assert broken.returncode == 1
    seq = refused_scale["seq"]
    assert f"audit trail broken at record {seq}: record {seq} was altered" in broken.stderr
