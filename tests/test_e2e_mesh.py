"""End-to-end: the election-night example under `interstate up`, with real Envoy side-cars, real
app processes and real HTTP on 127.0.0.1 (ephemeral ports)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from mesh_runner import EXAMPLE, INTERSTATE, Load, MeshRun, alive, cli, envoy_admin, envoy_stats, running_mesh, wait_for
from test_loader_limits import alias_bomb

pytestmark = pytest.mark.e2e


def get(url: str, **kw: object) -> httpx.Response:
    return httpx.get(url, timeout=10, trust_env=False, **kw)  # type: ignore[arg-type]


def sidecar_admins(status: dict, service: str) -> list[str]:
    return [r["sidecar"]["admin"] for r in status["services"][service]["replicas"]]


# ---- one shared mesh for read-only checks ---------------------------------------------------


def test_results_come_from_stats_through_two_sidecars(example_mesh: MeshRun) -> None:
    status = example_mesh.status()
    before_out = {
        a: envoy_stats(a, r"^http\.outbound\.downstream_rq_completed$") for a in sidecar_admins(status, "results")
    }
    before_in = envoy_stats(sidecar_admins(status, "stats")[0], r"^http\.inbound\.downstream_rq_completed$")

    response = get(example_mesh.ingress + "/results")
    assert response.status_code == 200
    body = response.json()
    assert body["precincts"] == 50 and body["votes_cast"] > 0
    assert {c["name"] for c in body["candidates"]} == {"Adams", "Baker", "Chen"}
    assert body["stats"]["served_by"] == "stats-0"

    after_out = {a: envoy_stats(a, r"^http\.outbound\.downstream_rq_completed$") for a in before_out}
    after_in = envoy_stats(sidecar_admins(status, "stats")[0], r"^http\.inbound\.downstream_rq_completed$")
    # exactly one results side-car sent the call out, and stats' side-car took it in
    grew = [a for a in before_out if sum(after_out[a].values()) > sum(before_out[a].values())]
    assert len(grew) == 1
    assert sum(after_in.values()) == sum(before_in.values()) + 1


def test_stats_sees_the_policy_header_results_code_never_sets(example_mesh: MeshRun) -> None:
    # Straight into a results side-car, with no header: results' code adds nothing, so what stats
    # sees was stamped by results' side-car from the workload annotation.
    replica = example_mesh.status()["services"]["results"]["replicas"][0]
    with example_mesh.mesh_client() as client:  # side-cars take mutual TLS only
        response = client.get(f"https://127.0.0.1:{replica['sidecar']['inbound']}/results")
    assert response.status_code == 200
    assert response.json()["stats"]["policy_ctx_seen"] == "FEC-F101"
    # Through the ingress without a header: the mesh default is stamped at the edge.
    assert get(example_mesh.ingress + "/results").json()["stats"]["policy_ctx_seen"] == "FEC-F101"


def test_a_client_policy_header_is_kept_end_to_end(example_mesh: MeshRun) -> None:
    response = get(example_mesh.ingress + "/results", headers={"x-policy-ctx": "FEC-F202"})
    assert response.status_code == 200
    assert response.json()["stats"]["policy_ctx_seen"] == "FEC-F202"


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([("x-policy-ctx", "FEC-FAKE")], "unknown"),
        ([("x-policy-ctx", "FEC-F101"), ("x-policy-ctx", "FEC-F202")], "two values"),
        ([("x-policy-ctx", "FEC-F101"), ("x-policy-ctx", "FEC-FAKE")], "a known value next to an unknown one"),
        ([("x-policy-ctx", "FEC-F101" + "0" * 100)], "oversized"),
    ],
)
def test_the_ingress_replaces_a_policy_context_it_does_not_know(
    example_mesh: MeshRun, headers: list[tuple[str, str]], why: str
) -> None:
    response = httpx.get(example_mesh.ingress + "/results", headers=headers, timeout=10, trust_env=False)
    assert response.status_code == 200, why
    assert response.json()["stats"]["policy_ctx_seen"] == "FEC-F101", why  # the default, not the client's
    # ... and counted (from the ingress's access log, flushed every second)
    wait_for(
        lambda: example_mesh.status()["boundary"]["policy_headers"].get("replaced", 0) > 0,
        timeout=5,
        what="the replacement to be counted",
    )


def test_a_header_name_with_an_underscore_is_refused(example_mesh: MeshRun) -> None:
    # `x_policy_ctx` could otherwise reach an app that treats it as `x-policy-ctx` (CGI/WSGI do)
    response = httpx.get(
        example_mesh.ingress + "/results", headers={"x_policy_ctx": "FEC-F202"}, timeout=10, trust_env=False
    )
    assert response.status_code == 400


def test_every_envoy_accepted_its_config_and_is_connected(example_mesh: MeshRun) -> None:
    status = example_mesh.status()
    admins = sidecar_admins(status, "results") + sidecar_admins(status, "stats") + [status["ingress"]["admin"]]
    assert len(admins) == 4
    for admin in admins:
        stats = envoy_stats(admin, r"update_rejected|control_plane\.connected_state")
        assert stats["control_plane.connected_state"] == 1
        rejected = {k: v for k, v in stats.items() if k.endswith("update_rejected")}
        assert rejected and all(v == 0 for v in rejected.values()), rejected
    for service in status["services"].values():
        for replica in service["replicas"]:
            types = replica["xds"]["types"]
            # stats calls nothing, so its side-car has no EDS clusters to subscribe to
            expected = {"CDS", "LDS", "RDS", "SDS"} | ({"EDS"} if replica["name"].startswith("results") else set())
            assert set(types) == expected
            assert all(t["sent"] == t["acked"] and t["nack"] is None for t in types.values())


def test_unknown_paths_and_hosts_get_clear_404s(example_mesh: MeshRun) -> None:
    response = get(example_mesh.ingress + "/nowhere")
    assert response.status_code == 404 and "no Gateway route" in response.text
    assert get(example_mesh.ingress + "/resultsx").status_code == 404
    replica = example_mesh.status()["services"]["results"]["replicas"][0]
    proxy = f"http://127.0.0.1:{replica['sidecar']['outbound']}"
    with httpx.Client(proxy=proxy, trust_env=False, timeout=10) as client:
        response = client.get("http://ballots:8080/")
    assert response.status_code == 404 and "spec.calls (stats)" in response.text


def test_an_autoscaled_workload_is_not_scaled_by_hand(example_mesh: MeshRun) -> None:
    refused = cli("scale", "results", "5", "--admin", example_mesh.admin)
    assert refused.returncode != 0
    assert "results is scaled by its HorizontalPodAutoscaler results-hpa" in refused.stderr
    assert example_mesh.status()["services"]["results"]["desired"] != 5  # (the autoscaler decides)


def test_the_admin_api_lets_no_one_in_uninvited(example_mesh: MeshRun) -> None:
    """Issue 11's attack on the real mesh: a cross-site form's text/plain POST of an empty mesh,
    a rebinding page's Host, a CLI without the token. Nothing changes."""
    mesh = example_mesh
    empty = '{"sources": {}}'
    attack = httpx.post(mesh.admin + "/apply", content=empty, headers={"content-type": "text/plain"}, trust_env=False)
    assert attack.status_code == 401
    assert mesh.api("POST", "/apply", content=empty, headers={"content-type": "text/plain"}).status_code == 415
    rebound = mesh.api(
        "GET", "/status", headers=mesh.headers | {"host": "rebind.example:" + mesh.admin.rsplit(":", 1)[1]}
    )
    assert rebound.status_code == 403
    assert httpx.get(mesh.admin + "/metrics", trust_env=False).status_code == 401
    no_token = subprocess.run(
        [*INTERSTATE, "scale", "stats", "0", "--admin", mesh.admin, "--token-file", "/nonexistent/admin.token"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("INTERSTATE_")},
    )
    assert no_token.returncode == 2 and "no admin token at /nonexistent/admin.token" in no_token.stderr
    status = mesh.status()
    assert all(s["ready"] >= 1 for s in status["services"].values()), status["services"]


def replicas_as_run(status: dict[str, Any]) -> dict[str, list[tuple[str, str, int | None]]]:
    """Each service's replicas: name, config version, app pid (what an apply would change)."""
    return {
        name: [(r["name"], r["version"], (r["app"] or {}).get("pid")) for r in svc["replicas"]]
        for name, svc in status["services"].items()
    }


def test_the_alias_bomb_sent_to_apply_is_refused_at_once_and_changes_nothing(example_mesh: MeshRun) -> None:
    """Issue 11: the 681-byte "billion laughs" that grew `validate` to 12 GB, sent with the token."""
    mesh = example_mesh
    before = replicas_as_run(mesh.status())
    started = time.monotonic()
    refused = mesh.api("POST", "/apply", json={"sources": {"bomb.yaml": alias_bomb(9)}})
    took = time.monotonic() - started
    assert refused.status_code == 422, refused.text
    assert len(refused.content) < 4_096
    assert "aliases (*name) repeat more than 10,000 values" in refused.text and "bomb.yaml" in refused.text
    assert took < 5  # a sanity bound for a loaded CI machine; the refusal itself takes milliseconds
    assert replicas_as_run(mesh.status()) == before
    trail = mesh.api("GET", "/audit", params={"since": 1}).json()
    rejected = [r for r in trail if r["action"] == "config.apply.rejected"]
    assert rejected and "aliases" in json.dumps(rejected[-1])


def test_everything_listens_on_loopback_only(example_mesh: MeshRun) -> None:
    pids = {example_mesh.proc.pid} | {p.pid for p in example_mesh.descendants()}
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening, "expected the mesh to listen somewhere"
    # gRPC binds "127.0.0.1" as the IPv4-mapped IPv6 address; both are loopback
    addresses = {ipaddress.ip_address(c.laddr.ip) for c in listening}
    assert {getattr(a, "ipv4_mapped", None) or a for a in addresses} == {ipaddress.ip_address("127.0.0.1")}


# ---- meshes of their own, for tests that change things ---------------------------------------


def test_scaling_results_under_traffic_loses_no_request(tmp_path: Path) -> None:
    # by hand: without its HorizontalPodAutoscaler (with it, `scale` is refused: see below)
    manual = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, manual)
    (manual / "results-autoscale.yaml").unlink()
    with running_mesh(manual, tmp_path / "run") as mesh:
        with Load(mesh.ingress + "/results", workers=4, max_s=90) as load:
            wait_for(lambda: load.ok > 20, what="traffic to flow")
            scaled = cli("scale", "results", "4", "--admin", mesh.admin)
            assert scaled.returncode == 0, scaled.stderr
            t0 = time.monotonic()
            wait_for(
                lambda: {"results-2", "results-3"} <= set(load.seen),
                timeout=10,
                what="new replicas to receive requests",
            )
            reached = time.monotonic() - t0
            assert mesh.status()["services"]["results"]["ready"] == 4
            shrunk = cli("scale", "results", "1", "--admin", mesh.admin)
            assert shrunk.returncode == 0, shrunk.stderr
            mark = dict(load.seen)
            wait_for(lambda: load.ok > sum(mark.values()) + 40, what="traffic after scale-in")
            load.stop()
            after = {k: load.seen.get(k, 0) - mark.get(k, 0) for k in load.seen}
        assert load.failures == [], load.failures[:5]
        assert reached < 10
        survivors = [r["name"] for r in mesh.status()["services"]["results"]["replicas"]]
        assert survivors == ["results-0"]
        # after the scale-in only the survivor answered (the first few may still be in flight)
        assert sum(v for k, v in after.items() if k != "results-0") <= 8


def test_a_killed_app_is_restarted_and_stop_leaves_nothing(tmp_path: Path) -> None:
    with running_mesh(EXAMPLE, tmp_path / "run") as mesh:
        replica = mesh.status()["services"]["stats"]["replicas"][0]
        os.kill(replica["app"]["pid"], signal.SIGKILL)

        def restarted() -> dict | None:
            r = mesh.status()["services"]["stats"]["replicas"][0]
            return r if r["app"]["restarts"] == 1 and r["state"] == "ready" else None

        now = wait_for(restarted, timeout=20, what="the app to be restarted")
        assert now["app"]["pid"] != replica["app"]["pid"]
        assert get(mesh.ingress + "/results").status_code == 200

        # a crashed side-car is restarted too, on the same ports, and gets its config again
        sidecar = mesh.status()["services"]["stats"]["replicas"][0]["sidecar"]
        os.kill(sidecar["pid"], signal.SIGKILL)

        def sidecar_back() -> dict | None:
            r = mesh.status()["services"]["stats"]["replicas"][0]
            return r if r["sidecar"]["restarts"] == 1 and r["state"] == "ready" else None

        back = wait_for(sidecar_back, timeout=20, what="the side-car to be restarted")
        assert back["sidecar"]["pid"] != sidecar["pid"]
        assert wait_for(
            lambda: get(mesh.ingress + "/results").status_code == 200,
            timeout=10,
            what="traffic through the restarted side-car",
        )
        children = mesh.descendants()
        assert len(children) >= 7  # 3 apps, 3 side-cars, 1 ingress
        assert mesh.stop() == 0
        assert alive(children) == []
        assert "interstate: stopped" in "".join(mesh.output)


def test_a_killed_supervisor_takes_its_control_plane_and_leaves_the_data_plane(tmp_path: Path) -> None:
    with running_mesh(EXAMPLE, tmp_path / "run") as mesh:
        children = mesh.descendants()
        plane = [c for c in children if "interstate.controlplane" in " ".join(c.cmdline())]
        data = [c for c in children if c not in plane]  # 3 apps, 3 side-cars, the ingress
        assert len(plane) == 1 and len(data) >= 7
        mesh.proc.kill()  # no chance to clean up: the kernel tells the control plane its parent died
        mesh.proc.wait(10)
        wait_for(lambda: alive(plane) == [], timeout=15, what="the control plane to exit")
        assert alive(data) == data  # apps and Envoys serve on, for the next `up` to adopt
        down = cli("down", "--run-dir", str(tmp_path / "run"))
        assert down.returncode == 0 and "unit(s) left running" in down.stdout, down
        assert alive(data) == []


def test_an_invalid_mesh_is_refused_and_nothing_starts(tmp_path: Path) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text(
        (EXAMPLE / "stats-destination.yml").read_text().replace("30s", "30x")
        + "---\n"
        + (EXAMPLE / "results.yaml").read_text()
    )
    run_dir = tmp_path / "run"
    result = cli("up", str(bad), "--auto-ports", "--run-dir", str(run_dir), timeout=60)
    assert result.returncode == 1
    assert (
        f"{bad}: document 1 (TrafficPolicy stats-breaker): spec.outlierDetection.baseEjectionTime: "
        "'30x' is not a duration"
    ) in result.stderr
    assert f"{bad}: document 2 (Workload results): spec.calls[0]: unknown service 'stats'" in result.stderr
    assert "nothing was started" in result.stderr
    assert not run_dir.exists()


def test_apply_rejects_bad_changes_and_applies_good_ones(tmp_path: Path, mesh_copy: Path) -> None:
    with running_mesh(mesh_copy, tmp_path / "run") as mesh:

        def versions() -> dict:
            s = mesh.status()
            return {
                r["name"]: {t: v["acked"] for t, v in r["xds"]["types"].items()}
                for svc in s["services"].values()
                for r in svc["replicas"]
            }

        before = versions()
        policy = mesh_copy / "stats-destination.yml"
        policy.write_text(policy.read_text().replace("consecutiveErrors: 3", "consecutiveErrors: -3"))
        refused = cli("apply", str(mesh_copy), "--admin", mesh.admin)
        assert refused.returncode == 1
        assert "spec.outlierDetection.consecutiveErrors" in refused.stderr
        assert versions() == before
        assert get(mesh.ingress + "/results").status_code == 200

        policy.write_text(policy.read_text().replace("consecutiveErrors: -3", "consecutiveErrors: 5"))
        stats_file = mesh_copy / "stats.yaml"
        stats_file.write_text(stats_file.read_text().replace("replicas: 1", "replicas: 2"))
        applied = cli("apply", str(mesh_copy), "--admin", mesh.admin)
        assert applied.returncode == 0, applied.stderr
        status = mesh.status()
        assert status["services"]["stats"]["ready"] == 2
        # the results side-cars now eject stats replicas after 5 errors, not 3
        admin = sidecar_admins(status, "results")[0]
        config = envoy_admin(admin, "/config_dump", resource="dynamic_active_clusters").json()
        stats_cluster = next(c["cluster"] for c in config["configs"] if c["cluster"]["name"] == "outbound|stats")
        assert stats_cluster["outlier_detection"]["consecutive_5xx"] == 5
        served = {get(mesh.ingress + "/results").json()["stats"]["served_by"] for _ in range(20)}
        assert served == {"stats-0", "stats-1"}

        # removing the Gateway stops the ingress; the side-cars stay as they are
        mesh_file = mesh_copy / "mesh.yaml"
        mesh_file.write_text(mesh_file.read_text().split("---")[0])
        removed = cli("apply", str(mesh_copy), "--admin", mesh.admin)
        assert removed.returncode == 0, removed.stderr
        status = mesh.status()
        assert status["ingress"] is None and status["services"]["results"]["ready"] == 2
        with pytest.raises(httpx.ConnectError):
            get(mesh.ingress + "/results")


def test_a_failing_apply_leaves_the_mesh_as_it_was(tmp_path: Path, mesh_copy: Path) -> None:
    with running_mesh(mesh_copy, tmp_path / "run") as mesh:
        before = mesh.status()
        gateway_file = mesh_copy / "mesh.yaml"
        gateway_text = gateway_file.read_text()
        # Remove the Gateway and add a workload whose app dies at once: the apply must fail and
        # put everything back, ingress included.
        gateway_file.write_text(gateway_text.split("---")[0])
        (mesh_copy / "broken.yaml").write_text(
            "apiVersion: mesh.codifyhq.io/v1\nkind: Workload\nmetadata: {name: broken}\n"
            "spec: {port: 8080, run: {command: [python, -c, 'raise SystemExit(3)']}}\n"
        )
        failed = cli("apply", str(mesh_copy), "--admin", mesh.admin)
        assert failed.returncode == 3, failed.stdout + failed.stderr
        assert "app broken-0 exited with 3 before it was ready" in failed.stderr
        assert "previous mesh is back in force" in failed.stderr
        after = mesh.status()
        assert set(after["services"]) == set(before["services"]) == {"results", "stats"}
        assert after["ingress"]["pid"] == before["ingress"]["pid"]
        assert get(mesh.ingress + "/results").status_code == 200

        # The ingress still takes new config after the rollback.
        (mesh_copy / "broken.yaml").unlink()
        gateway_file.write_text(
            gateway_text.replace(
                "- { pathPrefix: /results, service: results }",
                "- { pathPrefix: /results, service: results }\n    - { pathPrefix: /stats, service: stats }",
            )
        )
        applied = cli("apply", str(mesh_copy), "--admin", mesh.admin)
        assert applied.returncode == 0, applied.stderr
        response = get(mesh.ingress + "/stats")
        assert response.status_code == 200 and response.json()["served_by"] == "stats-0"


def test_a_service_that_requires_a_policy_fails_closed(tmp_path: Path, mesh_copy: Path) -> None:
    stats_file = mesh_copy / "stats.yaml"
    stats_file.write_text(stats_file.read_text().replace("  replicas: 1\n", "  replicas: 1\n  requirePolicy: true\n"))
    with running_mesh(mesh_copy, tmp_path / "run") as mesh:
        assert get(mesh.ingress + "/results").status_code == 200  # results' side-car stamps FEC-F101
        inbound = mesh.status()["services"]["stats"]["replicas"][0]["sidecar"]["inbound"]
        with mesh.mesh_client("results") as client:
            missing = client.get(f"https://127.0.0.1:{inbound}/stats")
            unknown = client.get(f"https://127.0.0.1:{inbound}/stats", headers={"x-policy-ctx": "FEC-FAKE"})
            known = client.get(f"https://127.0.0.1:{inbound}/stats", headers={"x-policy-ctx": "FEC-F202"})
        assert missing.status_code == unknown.status_code == 403
        assert "interstate: access denied:" in missing.text
        assert "stats-requires-one-known-x-policy-ctx" in missing.text  # the rule that said no
        assert known.status_code == 200 and known.json()["policy_ctx"] == "FEC-F202"

        # A scale whose new replica cannot start leaves the service as it was (desired count too).
        serve = (
            "import os, sys, http.server as h; "
            "sys.exit(4) if os.environ['INTERSTATE_REPLICA'] == '1' else "
            "h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), h.BaseHTTPRequestHandler).serve_forever()"
        )
        (mesh_copy / "picky.yaml").write_text(
            "apiVersion: mesh.codifyhq.io/v1\nkind: Workload\nmetadata: {name: picky}\n"
            f'spec: {{port: 8080, run: {{command: [python, -c, "{serve}"]}}}}\n'
        )
        assert cli("apply", str(mesh_copy), "--admin", mesh.admin).returncode == 0
        scaled = cli("scale", "picky", "2", "--admin", mesh.admin)
        assert scaled.returncode != 0 and "picky-1 exited with 4" in scaled.stderr, scaled.stderr
        picky = mesh.status()["services"]["picky"]
        assert picky["desired"] == 1 and [r["name"] for r in picky["replicas"]] == ["picky-0"], picky


def test_more_replicas_than_the_machine_holds_are_refused_naming_the_budget(
    tmp_path: Path, example_mesh: MeshRun, mesh_copy: Path
) -> None:
    """Issue 25: `replicas: 1000` asked for ~35 GB of a 24 GB machine. The mesh's replica budget
    (75% of the memory at 40 MB a replica, or --max-replicas) refuses it at up, apply and scale,
    and the running mesh is unchanged."""
    stats = mesh_copy / "stats.yaml"
    stats.write_text(stats.read_text().replace("replicas: 1", "replicas: 1000"))
    budget = example_mesh.status()["budget"]
    assert budget["replicas"] == 3 and 1 < budget["max_replicas"] < 1003, budget
    assert budget["measured_mb"] and budget["measured_mb"] < 200 and budget["planned_mb"] == 40
    said = f"the mesh would run 1002 replicas in all (stats 1000, results 2); this machine's replica budget is {budget['max_replicas']}"

    up = cli("up", str(mesh_copy), "--auto-ports", "--run-dir", str(tmp_path / "run"), timeout=60)
    assert (
        up.returncode == 1
        and said in up.stderr
        and "stats.yaml: document 1 (Workload stats): spec.replicas" in up.stderr
    )
    assert not list((tmp_path / "run").glob("envoy/*.json"))  # nothing was started

    before = example_mesh.status()
    applied = cli("apply", str(mesh_copy), "--admin", example_mesh.admin)
    assert applied.returncode == 1 and said in applied.stderr, applied.stderr
    scaled = cli("scale", "stats", "1000", "--admin", example_mesh.admin)
    assert scaled.returncode != 0 and said in scaled.stderr, scaled.stderr
    after = example_mesh.status()
    assert {n: len(s["replicas"]) for n, s in after["services"].items()} == {
        n: len(s["replicas"]) for n, s in before["services"].items()
    }
    shown = cli("status", "--admin", example_mesh.admin).stdout
    assert f"replicas: 3 of a budget of {budget['max_replicas']}" in shown
