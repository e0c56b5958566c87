"""Snapshots made of shared ResourceSets mean the same as snapshots of loose resources."""

from __future__ import annotations

import pytest

from meshcp.cache import Snapshot
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import ResourceSet, set_version
from tests.factories import CDS, EDS, World, cluster


def _split(world: World) -> tuple[list[Resource], list[ResourceSet]]:
    resources = world.resources()
    by_type: dict[str, list[Resource]] = {}
    for resource in resources:
        by_type.setdefault(resource.type_url, []).append(resource)
    # Two parts for the clusters, one for every other type.
    sets = []
    for type_url, members in by_type.items():
        if type_url == CDS and len(members) > 1:
            sets += [ResourceSet(members[:1]), ResourceSet(members[1:])]
        else:
            sets.append(ResourceSet(members))
    return list(resources), sets


def test_sets_and_loose_resources_give_the_same_snapshot() -> None:
    world = World()
    loose, sets = _split(world)
    a, b = Snapshot(loose), Snapshot(sets)
    assert a.type_urls() == b.type_urls()
    for type_url in a.type_urls():
        assert a.version(type_url) == b.version(type_url)
        assert dict(a.resources(type_url)) == dict(b.resources(type_url))
        assert list(b.resources(type_url)) == sorted(b.resources(type_url))
        assert dict(a.versions(type_url)) == dict(b.versions(type_url))


def test_set_version_is_order_free_and_content_sensitive() -> None:
    world = World()
    resources = world.resources()
    assert set_version(resources) == set_version(list(reversed(resources)))
    world.endpoints["a"] = (9100,)
    assert set_version(world.resources()) != set_version(resources)
    assert set_version([]) == "0" * 32


def test_a_set_holds_one_type() -> None:
    world = World()
    with pytest.raises(ValueError, match="one type"):
        ResourceSet(world.resources())


def test_duplicate_names_across_parts_are_refused_when_merged() -> None:
    encode = World().encoder.encode
    snapshot = Snapshot([ResourceSet([encode(cluster("a"))]), ResourceSet([encode(cluster("a", 5))])])
    with pytest.raises(ValueError, match=r"two different .*Cluster resources named 'a'"):
        snapshot.resources(CDS)


def test_one_shared_set_is_indexed_and_diffed_once_for_every_class() -> None:
    world = World()
    endpoints = [r for r in world.resources() if r.type_url == EDS]
    before = ResourceSet(endpoints)
    world.endpoints["a"] = (9100,)
    after = ResourceSet([r for r in world.resources() if r.type_url == EDS])
    olds = [Snapshot([before]) for _ in range(3)]
    news = [Snapshot([after], previous=old) for old in olds]
    for old, new in zip(olds, news, strict=True):
        assert new.changed_types(old) == {EDS}
        assert new.changed_names(EDS, old.resources(EDS)) == frozenset({"a"})
    # The classes share the set's index, not copies of it.
    assert news[0].resources(EDS) is news[1].resources(EDS) is after.mapping()
    assert after.changed_since(before) is after.changed_since(before)


def test_unchanged_type_keeps_the_previous_objects() -> None:
    world = World()
    _, sets = _split(world)
    first = Snapshot(sets)
    held = first.resources(CDS)
    world.endpoints["a"] = (9100,)
    _, sets_again = _split(world)
    second = Snapshot(sets_again, previous=first)
    assert second.changed_types(first) == {EDS}
    assert second.resources(CDS) is held
