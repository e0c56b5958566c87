"""Response bodies framed once for the streams sent the same response, within a byte bound.

Framing a response copies every resource it holds into one body; the streams of a proxy
class are sent the same responses, so a body framed for one of them is kept for the
others. It is needed only while they are being served (a cold start, a change), yet a
cache that keeps each body as long as its snapshot lives keeps, in steady state, a copy
of every class's whole configuration: with large classes (a permissive mesh: ~1 MB of
responses per class, 1,000 classes) that copy was most of the controller's memory.

Bodies are kept here least recently used first out, up to `limit` bytes over all
snapshots; a stream that finds its body evicted frames it again (a copy of bytes already
encoded, never a re-encode).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

from meshcp.cache.snapshot import Snapshot

#: Default bound: the bodies of the classes being served at once in a cold start.
DEFAULT_FRAMED_LIMIT = 64 * 1024 * 1024


class FramedBodies:
    """Bodies by (snapshot, the protocol's key), at most `limit` bytes in all."""

    def __init__(self, limit: int = DEFAULT_FRAMED_LIMIT) -> None:
        self.limit = limit
        #: Bytes held now.
        self.held = 0
        #: Bodies framed (a miss) and found (a hit), for tests and benchmarks.
        self.framed = 0
        self.found = 0
        # By the snapshot's id: a snapshot is never kept alive by a body framed from it.
        # The weak reference tells a live entry from one whose id a new snapshot reuses.
        self._bodies: OrderedDict[tuple[int, Hashable], tuple[weakref.ref[Snapshot], bytes]] = OrderedDict()

    def get(self, snapshot: Snapshot, key: Hashable, frame: Callable[[], bytes]) -> bytes:
        """The body for `key` from `snapshot`, framed by `frame` unless already held."""
        entry_key = (id(snapshot), key)
        entry = self._bodies.get(entry_key)
        if entry is not None:
            if entry[0]() is snapshot:
                self._bodies.move_to_end(entry_key)
                self.found += 1
                return entry[1]
            self._drop(entry_key)
        body = frame()
        self.framed += 1
        self._bodies[entry_key] = (weakref.ref(snapshot), body)
        self.held += len(body)
        while self.held > self.limit and len(self._bodies) > 1:
            self._drop(next(iter(self._bodies)))
        return body

    def keys(self, snapshot: Snapshot) -> list[Hashable]:
        """The keys held for `snapshot`, oldest first (tests look at what was shared)."""
        return [
            key
            for (ident, key), (ref, _) in self._bodies.items()
            if ident == id(snapshot) and ref() is snapshot
        ]

    def _drop(self, entry_key: tuple[int, Hashable]) -> None:
        _, body = self._bodies.pop(entry_key)
        self.held -= len(body)
