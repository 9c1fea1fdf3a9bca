"""Which of a cluster's mesh resources are in force, and what each one's status says: pure.

Mesh files are all or nothing: one bad file and `apply` changes nothing. A cluster is edited by
many people at once, so one bad custom resource must hold back only itself and what depends on
it (issue 24). `accept(objects, last_good)` validates the objects together (`cluster.mesh_config`,
the loader of mesh files); for each object an issue names, it puts that object's last good
version back (so an AccessPolicy edited into nonsense keeps protecting as before) or, for an
object never valid, leaves it out, and validates again, until the rest is valid. What depends on a
left-out object (a TrafficPolicy for a Workload that is not valid) is named on the next round
and held back likewise. `status_of(obj, issues)` is the `status` the controller writes through
each object's status subresource: `Accepted` true, or false with the loader's message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from interstate.errors import ConfigError, Issue
from interstate.kube import cluster
from interstate.model.index import MeshConfig

Key = tuple[str, str]  # (namespace/name, kind): one custom resource
ACCEPTED = "Accepted"


def key_of(obj: Mapping[str, Any]) -> Key:
    return (cluster.object_name(obj), str(obj.get("kind", "")))


def _keys_of(issue: Issue, keys: set[Key]) -> set[Key]:
    """The objects an issue is about: its source (namespace/name) and, when it names one, kind."""
    kind = issue.resource.split(" ", 1)[0] if issue.resource else ""
    return {k for k in keys if k[0] == issue.file and (not kind or k[1] == kind)}


@dataclass
class Accepted:
    """The outcome: the config in force (None: nothing valid at all), the issues of each object
    held back, and which of those still count in their last good version."""

    config: MeshConfig | None
    refused: dict[Key, list[Issue]] = field(default_factory=dict)
    kept: set[Key] = field(default_factory=set)  # refused, but their last good version is in force
    unplaced: list[Issue] = field(default_factory=list)  # issues no object could be blamed for


def accept(objects: Sequence[Mapping[str, Any]], last_good: Mapping[Key, Mapping[str, Any]]) -> Accepted:
    current = {key_of(o): o for o in objects}
    refused: dict[Key, list[Issue]] = {}
    dropped: set[Key] = set()  # refused and not even their last good version fits any more
    for _ in range(2 * len(current) + 1):
        candidate = []
        for key, obj in current.items():
            if key not in refused:
                candidate.append(obj)
            elif key in last_good and key not in dropped:
                candidate.append(last_good[key])
        try:
            config = cluster.mesh_config(candidate)
        except ConfigError as exc:
            blamed: dict[Key, list[Issue]] = {}
            unplaced = []
            for issue in exc.issues:
                keys = _keys_of(issue, set(current))
                if not keys:
                    unplaced.append(issue)
                for key in keys:
                    blamed.setdefault(key, []).append(issue)
            if unplaced and not blamed:
                return Accepted(None, refused, set(), unplaced)
            for key, issues in blamed.items():
                if key in refused:
                    dropped.add(key)  # its last good version does not fit what is valid now
                    refused[key] = refused[key] + [i for i in issues if i not in refused[key]]
                else:
                    refused[key] = issues
            continue
        kept = {k for k in refused if k in last_good and k not in dropped}
        return Accepted(config, refused, kept)
    return Accepted(None, refused, set())


def status_of(obj: Mapping[str, Any], issues: Sequence[Issue], kept: bool, now: str) -> dict[str, Any]:
    """The `status` of one mesh custom resource: `observedGeneration` and an `Accepted`
    condition (`lastTransitionTime` is kept while the condition does not change)."""
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    if issues:
        message = "; ".join(str(i) for i in issues)
        if kept:
            message += " (the previous version stays in force)"
        condition: dict[str, Any] = {
            "type": ACCEPTED,
            "status": "False",
            "reason": "Invalid",
            "message": message[:32768],
        }
    else:
        condition = {"type": ACCEPTED, "status": "True", "reason": "Valid", "message": "in force"}
    before = next((c for c in ((obj.get("status") or {}).get("conditions") or []) if c.get("type") == ACCEPTED), None)
    since = now
    if before is not None and before.get("status") == condition["status"] and before.get("lastTransitionTime"):
        since = str(before["lastTransitionTime"])
    condition |= {"observedGeneration": generation, "lastTransitionTime": since}
    return {"observedGeneration": generation, "conditions": [condition]}


def unchanged(obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """True when `obj` already carries `status` (nothing to write)."""
    return (obj.get("status") or {}) == status
