"""Snapshots, the cache's change notification, and the delta diff."""

from __future__ import annotations

import pytest

from meshcp.cache import Snapshot, SnapshotCache, diff
from meshcp.cache.snapshot import set_version
from tests.factories import CDS, EDS, LDS, World, cluster


def test_equal_content_gives_equal_versions_in_any_order() -> None:
    world = World()
    resources = world.resources()
    assert Snapshot(resources).version(CDS) == Snapshot(list(reversed(resources))).version(CDS)


def test_one_changed_endpoint_changes_only_the_endpoint_type() -> None:
    world = World()
    before = world.snapshot()
    world.endpoints["a"] = (8001, 8003)
    after = world.snapshot()
    assert after.changed_types(before) == {EDS}
    assert after.version(CDS) == before.version(CDS)


def test_duplicate_names_with_different_content_are_refused() -> None:
    world = World()
    encode = world.encoder.encode
    with pytest.raises(ValueError, match=r"two different .*Cluster resources named 'a'"):
        Snapshot([encode(cluster("a")), encode(cluster("a", 5))])


def test_set_snapshot_wakes_only_watchers_of_changed_content() -> None:
    cache = SnapshotCache()
    world = World()
    seen: dict[str, list[frozenset[str]]] = {"one": [], "two": []}
    cache.watch("one", lambda snapshot, changed: seen["one"].append(changed))
    cache.watch("two", lambda snapshot, changed: seen["two"].append(changed))

    first = world.snapshot()
    assert cache.set_snapshot("one", first) == {
        CDS,
        EDS,
        LDS,
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    }
    assert len(seen["one"]) == 1 and seen["two"] == []

    # Same content built again: nobody is woken and the first object (and with it what
    # servers derived from it, e.g. framed responses) stays.
    assert cache.set_snapshot("one", world.snapshot()) == frozenset()
    assert len(seen["one"]) == 1
    assert cache.get("one") is first

    world.endpoints["b"] = (9000,)
    assert cache.set_snapshot("one", world.snapshot()) == {EDS}
    assert seen["one"][-1] == {EDS}
    assert seen["two"] == []


def test_cancelled_watch_is_not_called() -> None:
    cache = SnapshotCache()
    calls: list[int] = []
    cancel = cache.watch("k", lambda snapshot, changed: calls.append(1))
    assert cache.watcher_count("k") == 1
    cancel()
    cancel()  # idempotent
    cache.set_snapshot("k", World().snapshot())
    assert calls == []
    assert cache.watcher_count("k") == 0


def test_status_lists_versions_per_class() -> None:
    cache = SnapshotCache()
    snapshot = World().snapshot()
    cache.set_snapshot("k", snapshot)
    status = cache.status()
    assert status["k"]["types"][CDS]["version"] == snapshot.version(CDS)  # type: ignore[index]
    assert status["k"]["types"][CDS]["resources"]["a"] == snapshot.resources(CDS)["a"].version  # type: ignore[index]


def test_empty_type_has_the_empty_set_version() -> None:
    assert Snapshot([]).version(CDS) == set_version([])


def test_diff_wildcard_updates_and_removals() -> None:
    world = World()
    current = world.snapshot().resources(CDS)
    known = {"a": current["a"].version, "gone": "v0"}
    updated, removed = diff(current, known, None)
    assert [r.name for r in updated] == ["b"]
    assert removed == ["gone"]


def test_diff_named_subscription_and_force() -> None:
    world = World()
    current = world.snapshot().resources(EDS)
    known = {"a": current["a"].version, "x": "v0"}
    updated, removed = diff(current, known, {"a", "b", "x", "missing"})
    assert [r.name for r in updated] == ["b"]
    assert removed == ["x"]
    updated, _ = diff(current, known, {"a"}, force={"a"})
    assert [r.name for r in updated] == ["a"]


def test_a_snapshot_built_after_another_names_what_changed_and_keeps_unchanged_mappings() -> None:
    """Streams diff a one-resource change in O(changed): the names are computed once per
    class, and a stream uses them only if it holds exactly the replaced content."""
    cache = SnapshotCache()
    world = World()
    before = world.snapshot()
    cache.set_snapshot("k", before)
    held_eds, held_versions = before.resources(EDS), before.versions(EDS)
    world.endpoints["a"] = (9000,)
    world.endpoints["c"] = (9001,)
    del world.endpoints["b"]
    after = Snapshot(world.resources(), previous=cache.get("k"))
    cache.set_snapshot("k", after)
    assert after.changed_names(EDS, held_eds) == frozenset({"a", "b", "c"})
    assert after.changed_names(EDS, held_versions) == frozenset({"a", "b", "c"})
    assert after.changed_names(EDS, dict(held_eds)) is None  # equal content, unknown object
    assert after.changed_names(CDS, before.resources(CDS)) is None  # CDS did not change...
    assert after.resources(CDS) is before.resources(CDS)  # ...so it is the same mapping


def test_diff_limited_to_changed_names_agrees_with_the_full_diff() -> None:
    world = World()
    before = world.snapshot()
    world.endpoints["a"] = (9000,)
    world.endpoints["c"] = (9001,)
    del world.endpoints["b"]
    known = before.versions(EDS)
    after = Snapshot(world.resources(), previous=before)
    changed = after.changed_names(EDS, known)
    assert changed == frozenset({"a", "b", "c"})
    for subscribed in (None, {"a", "b"}, {"b", "c", "missing"}):
        for force in ((), ("c",)):
            full = diff(after.resources(EDS), known, subscribed, force)
            assert diff(after.resources(EDS), known, subscribed, force, changed) == full
