"""Snapshots by proxy-class key, and the callbacks of the streams that watch them."""

from __future__ import annotations

from collections.abc import Callable

from meshcp.cache.snapshot import Snapshot

#: Called with the new snapshot and the types whose content changed.
Watcher = Callable[[Snapshot, frozenset[str]], None]


class SnapshotCache:
    """Holds the current snapshot of every proxy class and notifies its watchers.

    Setting a snapshot whose content equals the current one keeps the current object
    (and what servers derived from it, e.g. framed responses) and wakes nobody: identical
    content never causes a push. Build a new snapshot with `previous=cache.get(key)` so
    that streams diff only the names that changed (see `Snapshot`).
    """

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: dict[str, dict[int, Watcher]] = {}
        self._next_watch = 0

    def get(self, key: str) -> Snapshot | None:
        return self._snapshots.get(key)

    def keys(self) -> list[str]:
        return sorted(self._snapshots)

    def set_snapshot(self, key: str, snapshot: Snapshot) -> frozenset[str]:
        """Install `snapshot` for `key`; return the changed types (empty: nothing to push)."""
        current = self._snapshots.get(key)
        changed = snapshot.changed_types(current)
        if current is not None and not changed:
            return changed
        self._snapshots[key] = snapshot
        for watcher in list(self._watchers.get(key, {}).values()):
            watcher(snapshot, changed)
        return changed

    def clear(self, key: str) -> None:
        """Forget a class's snapshot; watchers keep their last content until a new one."""
        self._snapshots.pop(key, None)

    def watch(self, key: str, watcher: Watcher) -> Callable[[], None]:
        """Call `watcher` on every content change of `key`; returns the function that stops it."""
        self._next_watch += 1
        token = self._next_watch
        self._watchers.setdefault(key, {})[token] = watcher

        def cancel() -> None:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.pop(token, None)
                if not watchers:
                    del self._watchers[key]

        return cancel

    def watcher_count(self, key: str) -> int:
        return len(self._watchers.get(key, {}))

    def status(self) -> dict[str, object]:
        """Every class key with its per-type versions and watcher count (debug view)."""
        return {
            key: {"watchers": self.watcher_count(key), "types": snapshot.status()}
            for key, snapshot in sorted(self._snapshots.items())
        }
