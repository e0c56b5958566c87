"""Framed bodies: shared while held, evicted oldest first past the byte bound, never
keeping a snapshot alive, never handed to a new snapshot that reuses an old one's id."""

from __future__ import annotations

import gc
import weakref

from meshcp.xds.framed_bodies import FramedBodies
from tests.factories import World


def test_a_body_is_framed_once_while_held() -> None:
    bodies = FramedBodies()
    snapshot = World().snapshot()
    calls: list[int] = []

    def frame() -> bytes:
        calls.append(1)
        return b"body"

    assert bodies.get(snapshot, "k", frame) == b"body"
    assert bodies.get(snapshot, "k", frame) == b"body"
    assert len(calls) == 1
    assert (bodies.framed, bodies.found, bodies.held) == (1, 1, 4)


def test_past_the_limit_the_least_recently_used_body_goes() -> None:
    bodies = FramedBodies(limit=10)
    snapshot = World().snapshot()
    bodies.get(snapshot, "a", lambda: b"x" * 4)
    bodies.get(snapshot, "b", lambda: b"y" * 4)
    bodies.get(snapshot, "a", lambda: b"unused")  # a is now the most recent
    bodies.get(snapshot, "c", lambda: b"z" * 4)  # 12 bytes: b goes
    assert bodies.keys(snapshot) == ["a", "c"]
    assert bodies.held == 8
    assert bodies.get(snapshot, "b", lambda: b"again") == b"again"  # framed again


def test_one_body_larger_than_the_limit_is_still_kept_for_the_next_stream() -> None:
    bodies = FramedBodies(limit=2)
    snapshot = World().snapshot()
    bodies.get(snapshot, "big", lambda: b"x" * 100)
    assert bodies.get(snapshot, "big", lambda: b"other") == b"x" * 100


def test_a_body_does_not_keep_its_snapshot_alive_nor_serve_another() -> None:
    bodies = FramedBodies()
    snapshot = World().snapshot()
    gone = weakref.ref(snapshot)
    bodies.get(snapshot, "k", lambda: b"old")
    del snapshot
    gc.collect()
    assert gone() is None
    # A new snapshot, even one reusing the old one's id, is not given the old body.
    fresh = World().snapshot()
    assert bodies.get(fresh, "k", lambda: b"new") == b"new"
    assert bodies.get(fresh, "k", lambda: b"unused") == b"new"
