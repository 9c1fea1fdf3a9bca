"""End-to-end: JWT checks at the ingress (TokenPolicy), with keys and tokens made in the test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jwt_tokens import Signer
from mesh_runner import MeshRun, envoy_stats, running_mesh

pytestmark = pytest.mark.e2e

ISSUER = "https://auth.fec.gov"
AUDIENCE = "results-api"

POLICY = """\
apiVersion: mesh.codifyhq.io/v1
kind: TokenPolicy
metadata: {name: newsroom-tokens}
spec:
  issuers:
    - issuer: https://auth.fec.gov
      audiences: [results-api]
      jwks: {file: keys/jwks.json}
  roleClaim: roles
  require:
    - pathPrefix: /results
      roles: [newsroom]
"""


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def token_mesh(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Iterator[MeshRun]:
    import shutil

    from mesh_runner import EXAMPLE

    root = tmp_path_factory.mktemp("tokens")
    mesh = root / "mesh"
    shutil.copytree(EXAMPLE, mesh)
    (mesh / "keys").mkdir()
    (mesh / "keys" / "jwks.json").write_text(signer.jwks())
    (mesh / "tokens.yaml").write_text(POLICY)
    gateway = mesh / "mesh.yaml"
    gateway.write_text(
        gateway.read_text().replace(
            "- { pathPrefix: /results, service: results }",
            "- { pathPrefix: /results, service: results }\n    - { pathPrefix: /stats, service: stats }",
        )
    )
    with running_mesh(mesh, root / "run") as run:
        yield run


def call(mesh: MeshRun, path: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(mesh.ingress + path, headers=headers, timeout=10, trust_env=False)


def test_a_valid_token_with_the_role_passes(token_mesh: MeshRun, signer: Signer) -> None:
    response = call(token_mesh, "/results", signer.token(iss=ISSUER, aud=AUDIENCE, roles=["newsroom"]))
    assert response.status_code == 200
    assert response.json()["stats"]["served_by"] == "stats-0"


@pytest.mark.parametrize(
    ("case", "claims", "expected_body"),
    [
        ("expired", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "Jwt is expired"),
        ("wrong issuer", {"iss": "https://evil.example"}, "Jwt issuer is not configured"),
        ("wrong audience", {"aud": "another-api"}, "Audiences in Jwt are not allowed"),
    ],
)
def test_bad_tokens_get_401_before_any_app(
    token_mesh: MeshRun, signer: Signer, case: str, claims: dict[str, object], expected_body: str
) -> None:
    admin = token_mesh.status()["services"]["results"]["replicas"][0]["sidecar"]["admin"]
    before = envoy_stats(admin, r"^http\.inbound\.downstream_rq_total$")
    token = signer.token(**{"iss": ISSUER, "aud": AUDIENCE, "roles": ["newsroom"], **claims})
    response = call(token_mesh, "/results", token)
    assert response.status_code == 401, case
    assert expected_body in response.text
    assert envoy_stats(admin, r"^http\.inbound\.downstream_rq_total$") == before  # never reached results


def test_a_bad_signature_and_a_missing_token_get_401(token_mesh: MeshRun, signer: Signer) -> None:
    forged = Signer(kid=signer.kid).token(iss=ISSUER, aud=AUDIENCE, roles=["newsroom"])  # same kid, other key
    response = call(token_mesh, "/results", forged)
    assert response.status_code == 401 and "Jwt verification fails" in response.text
    missing = call(token_mesh, "/results")
    assert missing.status_code == 401 and "Jwt is missing" in missing.text


def test_a_valid_token_without_the_role_gets_403(token_mesh: MeshRun, signer: Signer) -> None:
    response = call(token_mesh, "/results", signer.token(iss=ISSUER, aud=AUDIENCE, roles=["public"]))
    assert response.status_code == 403
    assert response.text.startswith("interstate: access denied")


def test_paths_no_policy_requires_need_no_token(token_mesh: MeshRun) -> None:
    response = call(token_mesh, "/stats")
    assert response.status_code == 200 and response.json()["served_by"] == "stats-0"


def test_a_jwks_file_that_is_not_a_jwks_is_a_validation_error(tmp_path: Path) -> None:
    from mesh_runner import cli

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text('{"keys": []}')
    (tmp_path / "tokens.yaml").write_text(POLICY)
    result = cli("validate", str(tmp_path / "tokens.yaml"))
    assert result.returncode == 1
    assert "document 1 (TokenPolicy newsroom-tokens): spec.issuers[0].jwks.file: " in result.stderr
    assert 'needs a non-empty "keys" list' in result.stderr
