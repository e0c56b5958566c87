"""What a client must be sent: the one function both stream kinds use."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from meshcp.cache.resource import Resource


def diff(
    current: Mapping[str, Resource],
    known: Mapping[str, str],
    subscribed: Collection[str] | None,
    force: Collection[str] = (),
    changed: Collection[str] | None = None,
) -> tuple[list[Resource], list[str]]:
    """Compare what a client holds with what it should hold.

    `current` is the snapshot's resources of one type; `known` maps the names the
    client holds to their versions; `subscribed` is the set of names it asked for, or
    None for a wildcard subscription; names in `force` are sent even when the client
    already holds them at the same version. Returns (updated, removed): resources to
    send, in name order, and held names that no longer exist.

    `changed`, when given, promises that only those names can differ between `known`
    and `current` (see `Snapshot.changed_names`): then only they and `force` are looked
    at, so a one-resource change costs each stream O(changed) instead of O(resources).
    """
    if changed is not None:
        candidates = sorted({*changed, *force})
        if subscribed is not None:
            candidates = [name for name in candidates if name in subscribed]
        return _compare(candidates, current, known, force)
    if subscribed is None:
        updated = [r for name, r in current.items() if known.get(name) != r.version or name in force]
        removed = [name for name in known if name not in current]
        return updated, sorted(removed)
    return _compare(sorted(subscribed), current, known, force)


def _compare(
    names: list[str], current: Mapping[str, Resource], known: Mapping[str, str], force: Collection[str]
) -> tuple[list[Resource], list[str]]:
    """`names` (in order) split into resources to send and held names that are gone."""
    updated = []
    removed = []
    for name in names:
        resource = current.get(name)
        if resource is None:
            if name in known:
                removed.append(name)
        elif known.get(name) != resource.version or name in force:
            updated.append(resource)
    return updated, removed
