"""CustomResourceDefinitions of the mesh kinds (kube/crds.py, `interstate manifests crds`).

There is no kube-apiserver here. Each CRD is checked three ways instead:
- kubernetes-validate: the object is a valid apiextensions.k8s.io/v1 CustomResourceDefinition
  (Kubernetes' own OpenAPI, strict: unknown fields refused);
- `structural_problems`: the API server's structural-schema rules, written out below from the
  Kubernetes docs ("Specifying a structural schema"), since the OpenAPI alone does not carry them;
- jsonschema: mesh documents the loader accepts (the example, and documents using every
  optional section) pass their CRD's schema, and documents with a wrong field fail both the
  loader and the schema (the schema is read as the API server reads it with strict field
  validation: `nullable` honoured, unknown fields refused).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from interstate.cli import main
from interstate.config.loader import decode_sources
from interstate.errors import ConfigError
from interstate.kube import crds
from interstate.model import KINDS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "election-night"
KUBERNETES = "1.37.0"
GROUP = "mesh.codifyhq.io"

# Documents using the optional sections of every kind (all accepted by the loader, as a whole).
FULL = """\
apiVersion: mesh.codifyhq.io/v1
kind: Mesh
metadata: { name: election-night }
spec:
  trustDomain: fec.gov.local
  policyHeader: x-policy-ctx
  defaultPolicy: FEC-F101
  knownPolicies: [FEC-F101, FEC-F202]
  unknownPolicy: REJECT
  mtls: { mode: PERMISSIVE }
  allowedHeaders: [x-correlation-id, x-results-*]
  outboundTrafficPolicy: { mode: ALLOW_ANY }
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata:
  name: results
  annotations: { mesh.codifyhq.io/inject: "enabled", mesh.codifyhq.io/policy: "FEC-F101" }
  labels: { team: fec }
spec:
  port: 8080
  replicas: 2
  version: v1
  calls: [stats, fec-api]
  run: { command: [python, results.py], workingDir: apps, env: { MODE: fast } }
  readinessProbe: { httpGet: { path: /healthz }, timeout: 20s }
  mtls: { mode: STRICT }
  requirePolicy: true
  resources: { requests: { cpu: 500m } }
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: { name: stats }
spec:
  port: 8081
  run: { command: [python, stats.py] }
  resources: { requests: { cpu: 1 } }
---
apiVersion: mesh.codifyhq.io/v1
kind: Workload
metadata: { name: stats-v2 }
spec: { port: 8082, version: v2, run: { command: [python, stats.py] } }
---
apiVersion: mesh.codifyhq.io/v1
kind: Gateway
metadata: { name: public }
spec:
  routes: [{ pathPrefix: /results, service: results }, { pathPrefix: /, service: stats }]
---
apiVersion: mesh.codifyhq.io/v1
kind: TrafficPolicy
metadata: { name: stats-breaker }
spec:
  destination: { service: stats }
  outlierDetection: { consecutiveErrors: 3, consecutiveGatewayErrors: 2, baseEjectionTime: 30s, interval: 500ms, maxEjectionPercent: 50 }
  connectionPool: { maxConnections: 100, maxPendingRequests: 50, maxRequests: 200, maxRequestsPerConnection: 10 }
  retries:
    attempts: 2
    perTryTimeout: 1s
    retryOn: [connect-failure, refused-stream, reset, gateway-error]
    backoff: { baseInterval: 25ms, maxInterval: 250ms }
    budget: { percent: 20, minConcurrency: 3 }
  timeout: 3s
  loadBalancer: { policy: RING_HASH, hashOn: { cookie: { name: session, ttl: 1h } } }
  fault: { abort: { percent: 50, status: 503 }, delay: { percent: 10, fixedDelay: 2s } }
---
apiVersion: mesh.codifyhq.io/v1
kind: AccessPolicy
metadata: { name: stats-callers }
spec:
  destination: { service: stats }
  allow:
    - { from: [results], methods: [GET, HEAD], pathPrefixes: [/stats] }
    - { from: [ingress] }
---
apiVersion: mesh.codifyhq.io/v1
kind: TokenPolicy
metadata: { name: newsrooms }
spec:
  issuers:
    - issuer: https://login.fec.gov
      audiences: [results-api]
      jwks: { inline: '{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}' }
  roleClaim: roles
  require: [{ pathPrefix: /results/admin, roles: [newsroom-admin] }]
---
apiVersion: mesh.codifyhq.io/v1
kind: TrafficSplit
metadata: { name: stats-canary }
spec:
  service: stats
  backends: [{ service: stats, weight: 90 }, { service: stats-v2, weight: 10 }]
  pin: { header: { name: x-canary, value: "true" }, backend: stats-v2 }
  stickyBy: { header: x-session }
---
apiVersion: mesh.codifyhq.io/v1
kind: ExternalService
metadata: { name: fec-api }
spec:
  address: api.open.fec.gov
  port: 443
  tls: true
  outlierDetection: { consecutiveErrors: 5 }
  retries: { attempts: 3, perTryTimeout: 2s }
  timeout: 10s
"""


def crd_of(kind: str) -> dict[str, Any]:
    (found,) = [c for c in crds.crds() if c["spec"]["names"]["kind"] == kind]
    return found


def as_json_schema(schema: dict[str, Any], at_metadata: bool = False) -> dict[str, Any]:
    """The OpenAPI schema as the API server applies it: `nullable` admits null, and unknown
    fields are refused where fields are listed (strict field validation), except in metadata."""
    out = copy.deepcopy(schema)
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:  # int-or-string
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    out.pop("x-kubernetes-int-or-string", None)
    if "properties" in out:
        if not at_metadata:
            out.setdefault("additionalProperties", False)
        out["properties"] = {k: as_json_schema(v, k == "metadata") for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = as_json_schema(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = as_json_schema(out["additionalProperties"])
    return out


def schema_errors(document: dict[str, Any]) -> list[str]:
    crd = crd_of(document["kind"])
    schema = as_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# --- the structural-schema rules of the API server ---------------------------------------------

_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_problems(node: dict[str, Any], where: str = "", in_junctor: bool = False) -> list[str]:
    problems: list[str] = []
    special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if in_junctor:
        for key in ("description", "type", "default", "additionalProperties", "nullable"):
            if key in node and not (key == "type" and node in _INT_OR_STRING):
                problems.append(f"{where}: {key} inside a junctor")
    elif node.get("type") not in _TYPES and not special:
        problems.append(f"{where}: no type")
    if node.get("additionalProperties") is False:
        problems.append(f"{where}: additionalProperties: false")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: both properties and additionalProperties")
    if node.get("uniqueItems"):
        problems.append(f"{where}: uniqueItems")
    if "$ref" in node or "default" in node:
        problems.append(f"{where}: $ref or default")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{where}: array without items")
    if node.get("x-kubernetes-int-or-string") and node.get("anyOf") not in (None, _INT_OR_STRING):
        problems.append(f"{where}: int-or-string with another anyOf")
    for junctor in _JUNCTORS:
        for sub in node.get(junctor, []) if junctor != "not" else [node.get("not")] if "not" in node else []:
            problems += structural_problems(sub, f"{where}.{junctor}", in_junctor=True)
    for name, sub in node.get("properties", {}).items():
        problems += structural_problems(sub, f"{where}.{name}", in_junctor)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += structural_problems(node[key], f"{where}.{key}", in_junctor)
    return problems


# --- the CRDs as objects -------------------------------------------------------------------------


def test_one_crd_per_mesh_kind_and_none_for_the_built_in_hpa() -> None:
    objects = crds.crds()

    kinds = [c["spec"]["names"]["kind"] for c in objects]
    assert kinds == [k for (v, k) in KINDS if v == f"{GROUP}/v1"]
    assert "HorizontalPodAutoscaler" not in kinds
    assert {c["metadata"]["name"] for c in objects} >= {
        "meshes.mesh.codifyhq.io",
        "workloads.mesh.codifyhq.io",
        "trafficpolicies.mesh.codifyhq.io",
        "trafficsplits.mesh.codifyhq.io",
        "accesspolicies.mesh.codifyhq.io",
        "externalservices.mesh.codifyhq.io",
    }
    for crd in objects:
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{GROUP}"
        assert spec["group"] == GROUP
        assert spec["scope"] == ("Cluster" if spec["names"]["kind"] == "Mesh" else "Namespaced")
        assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [("v1", True, True)]


@pytest.mark.parametrize("kind", [k for (v, k) in KINDS if v == f"{GROUP}/v1"])
def test_every_crd_is_a_valid_custom_resource_definition(kind: str) -> None:
    kubernetes_validate.validate(crd_of(kind), KUBERNETES, strict=True)


@pytest.mark.parametrize("kind", [k for (v, k) in KINDS if v == f"{GROUP}/v1"])
def test_every_schema_is_structural(kind: str) -> None:
    schema = crd_of(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    assert structural_problems(schema) == []
    assert set(schema["properties"]["metadata"]) == {"type", "properties"}
    assert set(schema["properties"]["metadata"]["properties"]) <= {"name", "generateName"}


def test_the_structural_check_and_kubernetes_validate_bite() -> None:
    crd = crd_of("TrafficPolicy")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    untyped = copy.deepcopy(spec)
    del untyped["properties"]["timeout"]["type"]
    closed = copy.deepcopy(spec)
    closed["additionalProperties"] = False
    union = copy.deepcopy(spec)
    union["properties"]["timeout"] = {"anyOf": [{"type": "string", "nullable": True}, {"type": "integer"}]}
    for bad in (untyped, closed, union):
        assert structural_problems(bad)

    misspelt = copy.deepcopy(crd)
    misspelt["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["nulable"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES, strict=True)


def test_printer_columns_point_at_fields_of_their_type() -> None:
    types = {"integer": "integer", "string": "string", "boolean": "boolean"}
    for crd in crds.crds():
        version = crd["spec"]["versions"][0]
        columns = version["additionalPrinterColumns"]
        assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        accepted = {
            "name": "Accepted",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Accepted")].status',
        }
        assert columns[-2] == accepted  # what the controller writes (kube.accept)
        for column in columns[:-2]:
            node = version["schema"]["openAPIV3Schema"]
            for part in column["jsonPath"].lstrip(".").split("."):
                node = node["properties"][part]
            assert types[node["type"]] == column["type"], (crd["metadata"]["name"], column)


def test_optional_fields_are_nullable_and_quantities_int_or_string() -> None:
    tp = crd_of("TrafficPolicy")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert tp["properties"]["timeout"] == {
        "type": "string",
        "pattern": r"^(?:([0-9]+(?:\.[0-9]+)?)(ms|us|h|m|s))+$",
        "nullable": True,
    }
    assert tp["required"] == ["destination"]
    workload = crd_of("Workload")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    cpu = workload["properties"]["resources"]["properties"]["requests"]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True
    assert cpu["anyOf"] == [{"type": "integer"}, {"type": "string"}]


def test_a_union_or_an_unknown_keyword_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="union of 2 types"):
        crds.structural({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]})
    with pytest.raises(ValueError, match="'oneOf' has no place"):
        crds.structural({"type": "object", "properties": {"x": {"type": "string", "oneOf": []}}})
    with pytest.raises(ValueError, match=r"\.x: no type"):
        crds.structural({"type": "object", "properties": {"x": {"description": "anything"}}})


# --- the schemas agree with the loader ------------------------------------------------------------


def mesh_documents(texts: list[str]) -> list[dict[str, Any]]:
    return [d for text in texts for d in yaml.safe_load_all(text) if d and str(d["apiVersion"]).startswith(GROUP)]


def test_the_example_passes_its_crd_schemas() -> None:
    files = sorted(p for p in EXAMPLE.glob("*.y*ml"))
    documents = mesh_documents([p.read_text(encoding="utf-8") for p in files])

    assert {d["kind"] for d in documents} >= {"Mesh", "Gateway", "Workload", "TrafficPolicy"}
    for document in documents:
        assert schema_errors(document) == [], document["metadata"]["name"]


def test_every_optional_section_passes_the_loader_and_the_schema() -> None:
    decode_sources({"full.yaml": FULL})  # the loader accepts them all

    documents = mesh_documents([FULL])
    assert {d["kind"] for d in documents} == {k for (v, k) in KINDS if v == f"{GROUP}/v1"}
    for document in documents:
        assert schema_errors(document) == [], document["metadata"]["name"]


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in mesh_documents([FULL]) if (d["kind"], d["metadata"]["name"]) == (kind, name)]
    return found


def edit(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy with `path` (dotted; `-` deletes) set to `value`."""
    out = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value == "-":
        del node[last]
    else:
        node[last] = value
    return out


WRONG = [
    ("TrafficPolicy", "stats-breaker", "spec.outlierDetection.consecutiveError", 3, "consecutiveError"),
    ("TrafficPolicy", "stats-breaker", "spec.outlierDetection.consecutiveErrors", "3", "is not of type"),
    ("TrafficPolicy", "stats-breaker", "spec.outlierDetection.baseEjectionTime", "30x", "does not match"),
    ("TrafficPolicy", "stats-breaker", "spec.destination", "-", "'destination' is a required property"),
    ("TrafficPolicy", "stats-breaker", "spec.loadBalancer.policy", "RANDOM", "is not one of"),
    ("Mesh", "election-night", "spec.mtls.mode", "LOOSE", "is not one of"),
    ("Mesh", "election-night", "spec.defaultPolicy", "FEC F101", "does not match"),
    ("Workload", "results", "spec.port", 70000, "is greater than the maximum"),
    ("Workload", "results", "spec.calls", ["Stats"], "does not match"),
    ("Workload", "results", "metadata.name", "Results", "does not match"),
    ("Gateway", "public", "spec.routes.0.pathPrefix", "results", "does not match"),
    ("TrafficSplit", "stats-canary", "spec.backends.0.weight", 101, "is greater than the maximum"),
    ("ExternalService", "fec-api", "spec.tls", "maybe", "is not of type"),
]


@pytest.mark.parametrize(("kind", "name", "path", "value", "says"), WRONG, ids=[w[2] + "=" + str(w[3]) for w in WRONG])
def test_a_wrong_field_fails_the_schema_and_the_loader(kind: str, name: str, path: str, value: Any, says: str) -> None:
    bad = edit(one(kind, name), path, value)

    errors = schema_errors(bad)
    assert errors and says in " ".join(errors), errors
    others = [d for d in mesh_documents([FULL]) if (d["kind"], d["metadata"]["name"]) != (kind, name)]
    with pytest.raises(ConfigError):
        decode_sources({"mesh.yaml": yaml.safe_dump_all([*others, bad])})


# --- the command ----------------------------------------------------------------------------------


def test_the_command_prints_every_crd() -> None:
    result = CliRunner().invoke(main, ["manifests", "crds"])

    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.stdout))
    assert objects == crds.crds()
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
