"""CustomResourceDefinitions of the mesh kinds, generated from the pydantic models.

Called by `interstate manifests crds`; pure (no I/O). One apiextensions.k8s.io/v1 CRD per
mesh.codifyhq.io kind in `model.KINDS` (the autoscaling/v2 HorizontalPodAutoscaler is built into
Kubernetes), group mesh.codifyhq.io, version v1, namespaced except the cluster-wide `Mesh`.

The schema of `spec` is pydantic's JSON schema of the kind's spec model, made *structural* as
the API server requires (see "Specifying a structural schema" in the Kubernetes docs):

- every `$ref` is inlined (no model is recursive);
- `X | None` (pydantic: `anyOf: [X, {type: null}]`) becomes X with `nullable: true`;
- `additionalProperties: false` (our `extra="forbid"`) is dropped: a structural schema may not
  say it; the API server prunes unknown fields, or refuses them under strict field validation
  (kubectl's default), and the control plane's loader refuses them in any case;
- `default`, `title` and `format` are dropped (defaults are the models' to apply: the API server
  would otherwise write them into stored objects, and pydantic writes durations as ISO 8601);
- `exclusiveMinimum: n` (JSON Schema 2020) becomes OpenAPI 3.0's `minimum: n, exclusiveMinimum: true`;
- string types whose rule lives in a validator function get the pattern that function enforces
  (names, durations, path prefixes, header names, policy IDs), and Kubernetes quantities become
  `x-kubernetes-int-or-string` with the quantity pattern (so `cpu: 0.5` must be written "500m"
  or "0.5" in a CRD, as an integer-or-string field cannot hold a float).

Anything else (a keyword outside `_KEYWORDS`, a real union) raises `ValueError`, so a model change
that a structural schema cannot express fails the tests instead of reaching a cluster. Cross-field
rules (weights summing to 100, ...) stay with the models: the API server checks shape, the loader
checks meaning. `x-kubernetes-preserve-unknown-fields` is not needed anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from interstate.model import KINDS, Resource, base, mesh, workload
from interstate.model.base import API_GROUP

VERSION = "v1"
CATEGORY = "interstate"  # `kubectl get interstate` lists every mesh resource
CLUSTER_SCOPED = frozenset({"Mesh"})
LABELS = {"app.kubernetes.io/part-of": "interstate"}

# OpenAPI keywords a converted schema may keep (anything else is refused, see the docstring).
_KEYWORDS = frozenset(
    {
        "type",
        "description",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "nullable",
        "anyOf",
        "x-kubernetes-int-or-string",
    }
)
_DROPPED = frozenset({"title", "default", "format", "examples", "uniqueItems"})

_NAME = {"type": "string", "maxLength": 63, "pattern": base._NAME_RE.pattern}
_DURATION = {"type": "string", "pattern": base._DURATION_RE.pattern}
# printable ASCII from '/', without '?' and '#' (base._check_path_prefix)
_PATH_PREFIX = {"type": "string", "pattern": '^/[!-"$->@-~]*$'}
_HEADER = {"type": "string", "pattern": mesh._HEADER_RE.pattern}
_ALLOWED_HEADER = {"type": "string", "pattern": r"^(\*|[a-z0-9][a-z0-9-]*\*?)$"}
_POLICY = {"type": "string", "pattern": mesh._POLICY_RE.pattern}
_QUANTITY = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": workload._QUANTITY_RE.pattern,
}

# Validator functions of the models -> the schema of what they accept.
_VALIDATED: dict[Callable[..., Any], dict[str, Any]] = {
    base._check_name: _NAME,
    base.parse_duration: _DURATION,
    base._check_path_prefix: _PATH_PREFIX,
    mesh._check_header: _HEADER,
    mesh._check_allowed: _ALLOWED_HEADER,
    mesh.check_policy_id: _POLICY,
    workload._check_cpu: _QUANTITY,
}

# Columns of `kubectl get`, per kind: (name, type, JSON path in the object).
_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "Mesh": [
        ("Trust-Domain", "string", ".spec.trustDomain"),
        ("mTLS", "string", ".spec.mtls.mode"),
        ("Default-Policy", "string", ".spec.defaultPolicy"),
    ],
    "Workload": [
        ("Port", "integer", ".spec.port"),
        ("Replicas", "integer", ".spec.replicas"),
        ("Version", "string", ".spec.version"),
    ],
    "TrafficPolicy": [
        ("Service", "string", ".spec.destination.service"),
        ("Errors", "integer", ".spec.outlierDetection.consecutiveErrors"),
        ("Ejection", "string", ".spec.outlierDetection.baseEjectionTime"),
        ("Timeout", "string", ".spec.timeout"),
    ],
    "AccessPolicy": [("Service", "string", ".spec.destination.service")],
    "TokenPolicy": [("Role-Claim", "string", ".spec.roleClaim")],
    "TrafficSplit": [
        ("Service", "string", ".spec.service"),
        ("Pinned-To", "string", ".spec.pin.backend"),
    ],
    "ExternalService": [
        ("Address", "string", ".spec.address"),
        ("Port", "integer", ".spec.port"),
        ("TLS", "boolean", ".spec.tls"),
    ],
}


def mesh_kinds() -> list[type[Resource]]:
    """The kinds of group mesh.codifyhq.io, in `KINDS` order."""
    return [cls for (api_version, _), cls in KINDS.items() if api_version == f"{API_GROUP}/{VERSION}"]


def crds() -> list[dict[str, Any]]:
    """One CustomResourceDefinition per mesh kind."""
    return [crd(cls) for cls in mesh_kinds()]


def crd(cls: type[Resource]) -> dict[str, Any]:
    kind = cls.KIND
    plural = plural_of(kind)
    columns = [{"name": name, "type": type_, "jsonPath": path} for name, type_, path in _COLUMNS.get(kind, [])] + [
        {"name": "Accepted", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Accepted")].status'},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}", "labels": dict(LABELS)},
        "spec": {
            "group": API_GROUP,
            "scope": "Cluster" if kind in CLUSTER_SCOPED else "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": resource_schema(cls)},
                    "subresources": {"status": {}},  # written by the controller (`kube.accept`)
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


# What the controller writes (`kube.accept.status_of`): metav1.Condition's shape.
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "conditions": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "required": ["type", "status", "lastTransitionTime", "reason", "message"],
                "properties": {
                    "type": {"type": "string", "maxLength": 316},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "observedGeneration": {"type": "integer", "format": "int64"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "reason": {"type": "string", "maxLength": 1024},
                    "message": {"type": "string", "maxLength": 32768},
                },
            },
        },
    },
}


def plural_of(kind: str) -> str:
    """TrafficPolicy -> trafficpolicies, Mesh -> meshes, Gateway -> gateways."""
    word = kind.lower()
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    return word + "s"


def resource_schema(cls: type[Resource]) -> dict[str, Any]:
    """The structural openAPIV3Schema of one kind: apiVersion, kind, metadata (name rule only), spec."""
    spec_field = cls.model_fields["spec"]
    spec_model = spec_field.annotation
    assert isinstance(spec_model, type) and issubclass(spec_model, BaseModel), cls
    schema: dict[str, Any] = {"type": "object"}
    description = _summary(cls)
    if description:
        schema["description"] = description
    schema["properties"] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        # Only name (and generateName) may be restricted under metadata.
        "metadata": {"type": "object", "properties": {"name": dict(_NAME)}},
        "spec": spec_schema(spec_model),
        "status": STATUS_SCHEMA,
    }
    if spec_field.is_required():
        schema["required"] = ["spec"]
    return schema


def spec_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = TypeAdapter(model).json_schema(by_alias=True, mode="validation", schema_generator=_CrdJsonSchema)
    return structural(raw)


def structural(schema: Mapping[str, Any]) -> dict[str, Any]:
    """pydantic's JSON schema (with `$defs`) -> a structural OpenAPI v3 schema (see the module doc)."""
    defs: Mapping[str, Any] = schema.get("$defs", {})
    body = {k: v for k, v in schema.items() if k != "$defs"}
    return _convert(body, defs, "")


def _convert(node: Mapping[str, Any], defs: Mapping[str, Any], where: str) -> dict[str, Any]:
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        name = str(ref).removeprefix("#/$defs/")
        if name not in defs:
            raise ValueError(f"{where or '<root>'}: unresolvable $ref {ref!r}")
        node = {**defs[name], **node}  # keywords beside the $ref (a description) win
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        union = node.pop("anyOf")
        options = [o for o in union if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"{where or '<root>'}: a union of {len(options)} types has no structural schema")
        inner = _convert(options[0], defs, where)
        out.update(inner)
        if len(options) < len(union):
            out["nullable"] = True
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "additionalProperties":
            if isinstance(value, Mapping):
                out[key] = _convert(value, defs, f"{where}.*")
            continue  # true/false: not allowed in a structural schema
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{where}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{where}[]")
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key not in _KEYWORDS:
            raise ValueError(f"{where or '<root>'}: keyword {key!r} has no place in a structural schema")
        else:
            out[key] = value
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise ValueError(f"{where or '<root>'}: no type (a structural schema needs one on every field)")
    first = [k for k in ("type", "description") if k in out]
    return {k: out[k] for k in [*first, *(k for k in out if k not in first)]}


class _CrdJsonSchema(GenerateJsonSchema):
    """pydantic's generator, told what the models' validator functions accept (see `_VALIDATED`)."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        return _known(schema) or super().function_before_schema(schema)

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema) -> JsonSchemaValue:
        return _known(schema) or super().function_after_schema(schema)


def _known(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    function = schema.get("function", {}).get("function")
    for validator, json_schema in _VALIDATED.items():
        if function is validator:
            return {k: (list(v) if isinstance(v, list) else v) for k, v in json_schema.items()}
    return None


def _summary(cls: type[Resource]) -> str:
    """The first line of the kind's module docstring ("The `TrafficPolicy` resource, ...")."""
    doc = sys.modules[cls.__module__].__doc__ or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")
