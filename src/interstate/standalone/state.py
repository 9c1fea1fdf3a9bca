"""What a standalone mesh keeps in its run folder so a restarted control plane carries on.

- `state/settings.json`: the settings `interstate up` resolved (ports fixed for the mesh's whole
  life, even with --auto-ports), written once by the supervisor, read by each control plane.
- `state/config.json`: the running mesh config, every resource as its model dumps it (durations
  as written: "30s"), written by the control plane after each change took effect and by the
  supervisor at start; read back through the same models, so what was valid stays valid. A JWKS
  that a TokenPolicy read from a file is kept as the keys themselves (`inline`): a restart must
  not depend on that file still being there, and the compiled config is the same either way.
Both are written atomically (0600). Called by `standalone.supervisor` and `interstate.controlplane`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from interstate.ca.store import write_private
from interstate.errors import ConfigError, Issue
from interstate.model import KINDS, Resource, TokenPolicy
from interstate.model.index import MeshConfig
from interstate.settings import Settings

FOLDER = "state"
SETTINGS_FILE = "settings.json"
CONFIG_FILE = "config.json"


def folder(run_dir: Path) -> Path:
    path = run_dir / FOLDER
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def save_settings(settings: Settings) -> None:
    data: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, timedelta):
            value = value.total_seconds()
        data[f.name] = value
    write_private(folder(settings.run_dir) / SETTINGS_FILE, json.dumps(data, indent=1))


def load_settings(run_dir: Path) -> Settings:
    data = json.loads((run_dir / FOLDER / SETTINGS_FILE).read_text())
    types = {f.name: f.type for f in fields(Settings)}
    out: dict[str, Any] = {}
    for name, value in data.items():
        kind = str(types.get(name, ""))
        if value is not None and "Path" in kind:
            value = Path(value)
        elif value is not None and "timedelta" in kind:
            value = timedelta(seconds=value)
        if name in types:
            out[name] = value
    return Settings(**out)


def _dump(resource: Resource) -> dict[str, Any]:
    data = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(resource, TokenPolicy):
        for issuer, dumped in zip(resource.spec.issuers, data["spec"]["issuers"], strict=True):
            dumped["jwks"] = {"inline": issuer.jwks.text}
    return data


def save_config(run_dir: Path, config: MeshConfig) -> None:
    resources = [_dump(r) for r in config.resources]
    origins = {ref: list(origin) for ref, origin in config.origins.items()}
    write_private(folder(run_dir) / CONFIG_FILE, json.dumps({"resources": resources, "origins": origins}))


def load_config(run_dir: Path) -> MeshConfig:
    """The config last saved; ConfigError naming the file if it cannot be read back."""
    path = run_dir / FOLDER / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
        resources = []
        for item in data["resources"]:
            cls = KINDS[(item["apiVersion"], item["kind"])]
            resources.append(cls.model_validate(item))
        origins = {ref: (str(o[0]), int(o[1])) for ref, o in data.get("origins", {}).items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError([Issue(str(path), 0, "", "", f"the saved mesh config cannot be read back: {exc}")]) from None
    return MeshConfig(tuple(resources), origins)
