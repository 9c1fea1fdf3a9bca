"""The snapshot cache: the latest snapshot per node ID, and a way for streams to wait for change.

The control plane `set`s snapshots; each ADS stream `watch`es its node. Unchanged snapshots
(same versions) do not wake anybody.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from interstate.xds.snapshot import Snapshot


@dataclass
class _Entry:
    snapshot: Snapshot | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class SnapshotCache:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def _entry(self, node_id: str) -> _Entry:
        return self._entries.setdefault(node_id, _Entry())

    def set(self, node_id: str, snapshot: Snapshot) -> bool:
        """Store a snapshot; wake the node's streams if any version changed. Returns changed."""
        entry = self._entry(node_id)
        if entry.snapshot is not None and entry.snapshot.versions == snapshot.versions:
            return False
        entry.snapshot = snapshot
        old, entry.changed = entry.changed, asyncio.Event()
        old.set()
        return True

    def get(self, node_id: str) -> Snapshot | None:
        entry = self._entries.get(node_id)
        return entry.snapshot if entry else None

    def watch(self, node_id: str) -> asyncio.Event:
        """An event set at the next change of this node's snapshot (take a new one after)."""
        return self._entry(node_id).changed

    def remove(self, node_id: str) -> None:
        """Forget the node's snapshot (its open streams keep their last config and are woken, so
        a later `set` for the same node reaches them)."""
        entry = self._entries.get(node_id)
        if entry is not None and entry.snapshot is not None:
            entry.snapshot = None
            old, entry.changed = entry.changed, asyncio.Event()
            old.set()

    def nodes(self) -> list[str]:
        return sorted(n for n, e in self._entries.items() if e.snapshot is not None)
