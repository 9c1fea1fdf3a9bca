"""Mesh files -> decoded resources, with every problem reported as an `Issue`.

Called by the CLI (`validate`, `up`, `apply`) and by the admin API (`apply` sends file texts, so
the server decodes exactly what the user's files say). Calls `validate.check` for mesh-wide rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from interstate.config.validate import Located, check
from interstate.errors import ConfigError, Issue
from interstate.model import KINDS, MESH_RULES, Resource
from interstate.model.index import MeshConfig

YAML_SUFFIXES = (".yaml", ".yml")
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]/-]*$")


def read_sources(path: str | Path) -> dict[str, str]:
    """Read a mesh file, or every *.yaml/*.yml file under a folder (sorted), as {name: text}."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        if not files:
            raise ConfigError([Issue(str(root), 0, "", "", "no *.yaml or *.yml files here")])
    elif root.is_file():
        files = [root]
    else:
        raise ConfigError([Issue(str(root), 0, "", "", "no such file or folder")])
    sources: dict[str, str] = {}
    issues: list[Issue] = []
    for f in files:
        try:
            sources[str(f)] = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            issues.append(Issue(str(f), 0, "", "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"))
        except OSError as exc:
            issues.append(Issue(str(f), 0, "", "", f"cannot be read: {exc.strerror}"))
    if issues:
        raise ConfigError(issues)
    return sources


def load(path: str | Path) -> MeshConfig:
    return decode_sources(read_sources(path))


def decode_sources(sources: Mapping[str, str], base_dir: Path | None = None, *, kubernetes: bool = False) -> MeshConfig:
    """Decode {file name: YAML text} into a validated MeshConfig, or raise ConfigError.
    Files a document names (a JWKS) are read relative to that document's file when it exists
    here, else relative to `base_dir` (the running mesh's folder, for `apply`). `kubernetes`:
    the documents are a cluster's custom resources (a Workload's `spec.run` may be omitted)."""
    issues: list[Issue] = []
    located: list[Located] = []
    invalid: set[tuple[str, str]] = set()  # (kind, name) of documents that failed to decode
    for file, text in sources.items():
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            issues.append(Issue(file, 0, "", "", f"not valid YAML{where}: {problem}"))
            continue
        for number, document in enumerate(documents, start=1):
            if document is None:
                continue
            folder = Path(file).parent
            context = {
                "base_dir": folder if folder.is_dir() or base_dir is None else base_dir,
                "kubernetes": kubernetes,
            }
            resource = _decode_document(file, number, document, issues, context)
            if resource is not None:
                located.append(Located(resource, file, number))
            elif isinstance(document, dict) and isinstance(document.get("metadata"), dict):
                invalid.add((str(document.get("kind")), str(document["metadata"].get("name"))))
    issues.extend(check(located, invalid))
    issues.extend(_mesh_rules(located))
    if issues:
        raise ConfigError(issues)
    return MeshConfig(
        tuple(item.resource for item in located),
        MappingProxyType({item.resource.ref: (item.file, item.document) for item in located}),
    )


def _mesh_rules(located: Sequence[Located]) -> list[Issue]:
    """Issues from `model.MESH_RULES`, the rules that need two kinds at once."""
    where = {id(item.resource): item for item in located}
    resources = [item.resource for item in located]
    return [where[id(res)].issue(field, message) for rule in MESH_RULES for res, field, message in rule(resources)]


def _decode_document(
    file: str, number: int, document: Any, issues: list[Issue], context: dict[str, Any]
) -> Resource | None:
    if not isinstance(document, dict):
        issues.append(
            Issue(file, number, "", "", f"expected a mapping with apiVersion and kind, got {type(document).__name__}")
        )
        return None
    api_version, kind = document.get("apiVersion"), document.get("kind")
    name = document.get("metadata", {}).get("name") if isinstance(document.get("metadata"), dict) else None
    label = f"{kind} {name}" if kind and name else str(kind or "")
    cls = KINDS.get((str(api_version), str(kind)))
    if cls is None:
        known = ", ".join(sorted(f"{k} ({v})" for v, k in KINDS))
        if not kind:
            field, message = "kind", f"missing; known kinds: {known}"
        elif not any(k == kind for _, k in KINDS):
            field, message = "kind", f"unknown kind {kind!r}; known kinds: {known}"
        else:
            valid = ", ".join(sorted(v for v, k in KINDS if k == kind))
            field, message = "apiVersion", f"{api_version!r} is not valid for {kind}; use {valid}"
        issues.append(Issue(file, number, label, field, message))
        return None
    try:
        # YAML is camelCase only (as the Kubernetes CRDs will be); field names are for Python.
        return cls.model_validate(document, by_alias=True, by_name=False, context=context)
    except ValidationError as exc:
        for error in exc.errors():
            field, message = _describe(cls, error)
            issues.append(Issue(file, number, label, field, message))
        return None


def _describe(cls: type[BaseModel], error: Mapping[str, Any]) -> tuple[str, str]:
    loc: Sequence[str | int] = error["loc"]
    field = _path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _fields_at(cls, loc[:-1])
        hint = f"; valid fields here: {', '.join(valid)}" if valid else ""
        return field, f"unknown field{hint}"
    if kind == "missing":
        return field, "required field is missing"
    message = str(error["msg"])
    if kind in ("value_error", "assertion_error"):
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        # A validator may name the field itself ("perTryTimeout: needs a bound"): a path from
        # the document's root, or one relative to where pydantic found the error.
        head, sep, rest = message.partition(": ")
        if sep and _FIELD_PATH.match(head):
            if not field or head.startswith(field):
                return head, rest
            return f"{field}.{head}", rest
        return field, message
    return field, f"{message} (got {error.get('input')!r})"


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fields_at(cls: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The YAML field names accepted at `loc` inside `cls`, for 'did you mean' hints."""
    current: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        found = None
        for name, info in current.model_fields.items():
            if part in (name, info.alias):
                found = info.annotation
                break
        current = _unwrap_model(found)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(info.alias or name for name, info in current.model_fields.items())
    return []


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None
