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

from pydantic import BaseModel, ValidationError

from interstate.config import documents, limits
from interstate.config.limits import FIXED
from interstate.config.validate import Located, check
from interstate.errors import ConfigError, Issue
from interstate.model import KINDS, MESH_RULES, Resource
from interstate.model.index import MeshConfig

YAML_SUFFIXES = (".yaml", ".yml")
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]/-]*$")


def read_sources(path: str | Path) -> dict[str, str]:
    """Read a mesh file, or every *.yaml/*.yml file under a folder (sorted), as {name: text}.
    A file over `MAX_FILE_BYTES`, or past `MAX_MESH_BYTES` in all, is refused unread."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        if not files:
            raise ConfigError([Issue(str(root), 0, "", "", "no *.yaml or *.yml files here")])
        if len(files) > limits.MAX_FILES:
            raise ConfigError([Issue(str(root), 0, "", "", _too_many_files(len(files)))])
    elif root.is_file():
        files = [root]
    else:
        raise ConfigError([Issue(str(root), 0, "", "", "no such file or folder")])
    sources: dict[str, str] = {}
    issues: list[Issue] = []
    total = 0
    for f in files:
        try:
            with f.open("rb") as stream:
                data = stream.read(limits.MAX_FILE_BYTES + 1)  # never more, however large the file
            if len(data) > limits.MAX_FILE_BYTES:
                issues.append(Issue(str(f), 0, "", "", _file_too_large(f.stat().st_size)))
                continue
            total += len(data)
            if total > limits.MAX_MESH_BYTES:
                issues.append(Issue(str(f), 0, "", "", _mesh_too_large()))
                break
            sources[str(f)] = data.decode("utf-8")
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
    the documents are a cluster's custom resources (a Workload's `spec.run` may be omitted).
    Input past a limit of `config.limits` is refused with an issue naming the limit; at most
    `MAX_ISSUES` issues are reported, every value they quote cut short."""
    issues: list[Issue] = []
    located: list[Located] = []
    invalid: set[tuple[str, str]] = set()  # (kind, name) of documents that failed to decode
    budget = documents.Budget()
    for file, data in _sized(sources, issues):
        try:
            parsed = documents.read(file, data, budget)
        except documents.Unreadable as exc:
            issues.append(exc.issue)
            if budget.spent:
                break
            continue
        context = {"base_dir": _base_dir(file, base_dir), "kubernetes": kubernetes}
        for number, document in enumerate(parsed, start=1):
            if document is None:
                continue
            resource = _decode_document(file, number, document, issues, context)
            if resource is not None:
                located.append(Located(resource, file, number))
            elif isinstance(document, dict) and isinstance(document.get("metadata"), dict):
                invalid.add((_text(document.get("kind")), _text(document["metadata"].get("name"))))
            if len(issues) > limits.MAX_ISSUES:
                break
        if len(issues) > limits.MAX_ISSUES:
            break
    if len(issues) <= limits.MAX_ISSUES and not budget.spent:
        issues.extend(check(located, invalid))
        issues.extend(_mesh_rules(located))
    if issues:
        raise ConfigError(_reported(issues))
    return MeshConfig(
        tuple(item.resource for item in located),
        MappingProxyType({item.resource.ref: (item.file, item.document) for item in located}),
    )


def _sized(sources: Mapping[str, str], issues: list[Issue]) -> list[tuple[str, bytes]]:
    """(file name, UTF-8 bytes) of each source within the size limits, and issues for the others,
    before any source is parsed; none at all when together they are over `MAX_MESH_BYTES`."""
    if len(sources) > limits.MAX_FILES:
        first = limits.clip(next(iter(sources)), limits.MAX_NAME_CHARS)
        issues.append(Issue(first, 0, "", "", _too_many_files(len(sources))))
        return []
    sized: list[tuple[str, bytes]] = []
    total = 0
    for file, text in sources.items():
        if len(file) > limits.MAX_NAME_CHARS:
            problem = f"a file name of {len(file):,} characters is over the limit of {limits.MAX_NAME_CHARS:,}"
            issues.append(Issue(limits.clip(file), 0, "", "", f"{problem} ({FIXED})"))
            continue
        if len(text) > limits.MAX_FILE_BYTES:  # at least as many bytes: refused without encoding
            issues.append(Issue(file, 0, "", "", _file_too_large(len(text), at_least=True)))
            continue
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, only possible from a JSON request
            issues.append(Issue(file, 0, "", "", f"not UTF-8 text (character {exc.start}); send UTF-8"))
            continue
        if len(data) > limits.MAX_FILE_BYTES:
            issues.append(Issue(file, 0, "", "", _file_too_large(len(data))))
            continue
        total += len(data)
        if total > limits.MAX_MESH_BYTES:
            issues.append(Issue(file, 0, "", "", _mesh_too_large()))
            return []
        sized.append((file, data))
    return sized


def _file_too_large(count: int, at_least: bool = False) -> str:
    more = "at least " if at_least else ""
    return (
        f"{more}{count:,} bytes is over the limit of {limits.size(limits.MAX_FILE_BYTES)} for one mesh file "
        f"({FIXED}); split it into several files"
    )


def _mesh_too_large() -> str:
    return (
        f"the mesh files add up to more than {limits.size(limits.MAX_MESH_BYTES)}, the limit for one mesh "
        f"({FIXED}); nothing in it was checked"
    )


def _too_many_files(count: int) -> str:
    return f"{count:,} files are over the limit of {limits.MAX_FILES:,} for one mesh ({FIXED}); merge some of them"


def _base_dir(file: str, base_dir: Path | None) -> Path | None:
    """The folder a document's relative file names start from (see `decode_sources`)."""
    folder = Path(file).parent
    try:
        here = folder.is_dir()
    except (OSError, ValueError):  # a name no file system takes (too long, a NUL byte): from a request
        here = False
    return folder if here or base_dir is None else base_dir


def _reported(issues: list[Issue]) -> list[Issue]:
    """At most `MAX_ISSUES` issues, each cut to a readable length, and a last one saying how many
    were left out."""
    shown = [limits.bounded(issue) for issue in issues[: limits.MAX_ISSUES]]
    if len(issues) > limits.MAX_ISSUES:
        rest = issues[limits.MAX_ISSUES]
        shown.append(
            Issue(
                rest.file,
                0,
                "",
                "",
                f"stopped after {limits.MAX_ISSUES} issues ({FIXED}); fix these and validate again to see the rest",
            )
        )
    return shown


def _text(value: Any) -> str:
    """A kind or a name from a document that may hold anything there, as short text."""
    return value if isinstance(value, str) else limits.show(value)


def check_document(file: str, document: Any, *, kubernetes: bool = False) -> list[Issue]:
    """The issues of one document on its own: its kind, shape and every rule of its own fields,
    as `decode_sources` reports them, but not what it says of other resources (references,
    duplicates), which only the whole mesh can tell. What a validating admission webhook checks:
    in a cluster an object may name one that is created a moment later."""
    issues: list[Issue] = []
    _decode_document(file, 1, document, issues, {"base_dir": None, "kubernetes": kubernetes})
    return _reported(issues)


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
    label = f"{_text(kind)} {_text(name)}" if kind and name else _text(kind or "")
    cls = KINDS.get((api_version, kind)) if isinstance(api_version, str) and isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(sorted(f"{k} ({v})" for v, k in KINDS))
        if not kind:
            field, message = "kind", f"missing; known kinds: {known}"
        elif not any(k == kind for _, k in KINDS):
            field, message = "kind", f"unknown kind {limits.show(kind)}; known kinds: {known}"
        else:
            valid = ", ".join(sorted(v for v, k in KINDS if k == kind))
            field, message = "apiVersion", f"{limits.show(api_version)} is not valid for {kind}; use {valid}"
        issues.append(Issue(file, number, label, field, message))
        return None
    try:
        # YAML is camelCase only (as the Kubernetes CRDs will be); field names are for Python.
        return cls.model_validate(document, by_alias=True, by_name=False, context=context)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field, message = _describe(cls, error)
            issues.append(Issue(file, number, label, field, message))
        return None
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:  # a validator's own bug
        detail = limits.clip(f"{type(exc).__name__}: {exc}", limits.MAX_ECHO_CHARS)
        issues.append(Issue(file, number, label, "", f"cannot be checked ({detail}); this is a bug in interstate"))
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
    return field, f"{message} (got {limits.show(error.get('input'))})"


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + limits.clip(str(part))  # a key of the input
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
