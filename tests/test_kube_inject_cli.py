"""`interstate inject -f` (issue 24): manifests injected offline exactly as the webhook would,
checked against a golden file; injecting twice equals injecting once; every object it prints
passes Kubernetes' own schemas. (The real API server accepting injected workloads is for the
test kubelet's e2e.)"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml
from click.testing import CliRunner

from interstate.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "inject"
KUBERNETES = "1.37.0"
ARGS = ["--ca-bundle", str(FIXTURES / "ca.pem"), "--trust-domain", "fec.gov.local"]


def inject(source: Path | str, stdin: str | None = None) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["inject", "-f", str(source), *ARGS], input=stdin)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_the_manifests_are_injected_as_the_golden_file_says() -> None:
    printed, said = inject(FIXTURES / "workloads.yaml")
    golden = FIXTURES / "workloads.injected.yaml"
    assert printed == golden.read_text(), (
        "the injected manifests differ from the golden file; if the change is intended, regenerate it with "
        f"`interstate inject -f {FIXTURES / 'workloads.yaml'} {' '.join(ARGS)} > {golden}`"
    )
    assert "document 1 (Deployment results): injected" in said and "policy FEC-F101" in said
    assert "document 2 (CronJob nightly-tally): injected" in said
    assert "document 3 (Deployment legacy): not injected" in said


def test_injecting_twice_is_injecting_once_and_stdin_works() -> None:
    once, _ = inject(FIXTURES / "workloads.yaml")
    twice, said = inject("-", stdin=once)
    assert twice == once
    assert "already injected" in said


def test_every_printed_object_is_valid_to_kubernetes_and_the_side_car_comes_first() -> None:
    printed, _ = inject(FIXTURES / "workloads.yaml")
    documents = list(yaml.safe_load_all(printed))
    assert [d["kind"] for d in documents] == ["Deployment", "CronJob", "Deployment", "ConfigMap"]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    pod = documents[0]["spec"]["template"]
    assert pod["spec"]["initContainers"][0]["name"] == "interstate-proxy"
    assert pod["metadata"]["annotations"]["mesh.codifyhq.io/injected"]
    assert "initContainers" not in documents[2]["spec"]["template"]["spec"]  # it asked to stay out
    assert documents[3] == yaml.safe_load((FIXTURES / "workloads.yaml").read_text().split("---")[-1])


def test_a_pod_the_webhook_would_refuse_is_refused_naming_the_annotation(tmp_path: Path) -> None:
    bad = (
        (FIXTURES / "workloads.yaml")
        .read_text()
        .replace('mesh.codifyhq.io/policy: "FEC-F101"', 'mesh.codifyhq.io/policy: "no such"')
    )
    (tmp_path / "bad.yaml").write_text(bad)
    result = CliRunner().invoke(main, ["inject", "-f", str(tmp_path / "bad.yaml"), *ARGS])
    assert result.exit_code == 1 and "metadata.annotations.mesh.codifyhq.io/policy" in result.stderr, result.output


def test_the_chapters_own_deployment_is_told_its_service_account_gets_nothing() -> None:
    """Defect of issue 24: the chapter's pod runs as service account `default`, so the controller
    gives its side-car nothing; injection (webhook warning, or here on stderr) says so at once."""
    chapter = Path(__file__).parent / "fixtures" / "chapter" / "listings.yaml"
    printed, said = inject(chapter)
    assert "document 1 (Deployment results): injected" in said
    assert "runs as service account 'default'" in said and "serviceAccountName: results" in said
    assert [d["kind"] for d in yaml.safe_load_all(printed)] == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "TrafficPolicy",
    ]
