"""Typed facts the core and the modes report, shared by the admin API, dashboard and CLI.

`ReplicaState` is the life of one replica as its source sees it (the standalone supervisor, or
later a pod's phase); `ControlPlaneInfo` is what `interstate status` shows under `control_plane`.
Pure data; no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class ReplicaState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ControlPlaneInfo:
    """The control-plane process now serving: its pid, how often it was restarted (by the
    supervisor, after it died), since when this one serves, and how the previous one ended."""

    pid: int
    restarts: int = 0
    since: str = ""  # ISO 8601, UTC
    last_exit: str | None = None  # e.g. "killed by SIGKILL", None before the first restart

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ControlPlaneInfo:
        return cls(int(data["pid"]), int(data.get("restarts", 0)), str(data.get("since", "")), data.get("last_exit"))
