"""An immutable set of resources for one proxy class, with per-type content versions."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from meshcp.cache.resource import Resource

_EMPTY: Mapping[str, Resource] = MappingProxyType({})


def set_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources: the sum, modulo 2**128, of their versions.

    A resource's version is the SHA-256 of its bytes, which carry its name, so each
    element counts as its (name, content) pair. A sum rather than a hash over the sorted
    list: it needs no sorting, and a set made of shared parts sums their totals, so the
    snapshots of a thousand classes that differ in one resource cost one addition each
    instead of re-hashing everything they hold. Equal content gives equal versions in
    any process, whatever the order.
    """
    return format(sum(map(_number, resources)) & _MASK, "032x")


_MASK = (1 << 128) - 1


def _number(resource: Resource) -> int:
    version = resource.version
    if len(version) == 32:
        try:
            return int(version, 16)
        except ValueError:
            pass
    # Not one of our content hashes (hand-made resources): hash the pair itself.
    pair = hashlib.sha256(f"{resource.name}\0{version}".encode()).digest()
    return int.from_bytes(pair[:16], "big")


class ResourceSet:
    """Resources of one type, with unique names, that many snapshots hold together: a
    class's upstream clusters, the endpoints of a set of services, the trust of its
    upstreams.

    Snapshots times resources is large in a big mesh, so a snapshot must do nothing per
    resource on a change. A set is summed once when made, and indexed by name
    (and diffed against the set it replaces) once, when first asked; every snapshot
    holding it shares the result. Immutable.
    """

    __slots__ = ("__weakref__", "_mapping", "_resources", "_since", "_versions", "total", "type_url")

    def __init__(self, resources: Iterable[Resource]) -> None:
        self._resources = tuple(resources)
        types = {resource.type_url for resource in self._resources}
        if len(types) > 1:
            raise ValueError(f"a resource set holds one type, got {sorted(types)}")
        self.type_url = types.pop() if types else ""
        #: The sum of the members' versions (see `set_version`).
        self.total = sum(map(_number, self._resources))
        self._mapping: Mapping[str, Resource] | None = None
        self._versions: Mapping[str, str] | None = None
        self._since: dict[int, tuple[ResourceSet, frozenset[str]]] = {}

    def __len__(self) -> int:
        return len(self._resources)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self._resources)

    def mapping(self) -> Mapping[str, Resource]:
        """By name, in name order."""
        if self._mapping is None:
            named: dict[str, Resource] = {}
            _add(named, self._resources)
            self._mapping = MappingProxyType(dict(sorted(named.items())))
        return self._mapping

    def versions(self) -> Mapping[str, str]:
        if self._versions is None:
            self._versions = MappingProxyType({name: r.version for name, r in self.mapping().items()})
        return self._versions

    def changed_since(self, older: ResourceSet) -> frozenset[str]:
        """The names whose resources differ from `older`'s (added, changed or removed);
        computed once per pair, however many classes make the same step."""
        found = self._since.get(id(older))
        if found is not None and found[0] is older:
            return found[1]
        before, after = older.mapping(), self.mapping()
        names = {name for name, resource in after.items() if _differs(before.get(name), resource)}
        names.update(name for name in before if name not in after)
        if len(self._since) >= 8:
            self._since.clear()
        self._since[id(older)] = (older, frozenset(names))
        return self._since[id(older)][1]


def _add(named: dict[str, Resource], resources: Iterable[Resource]) -> None:
    for resource in resources:
        held = named.get(resource.name)
        if held is not None and held.version != resource.version:
            raise ValueError(f"two different {resource.type_url} resources named {resource.name!r}")
        named[resource.name] = resource


class Snapshot:
    """What every proxy of one class should hold, by type URL and name.

    Made of resources and shared `ResourceSet`s. Two snapshots with equal content have
    equal versions in any process, so a proxy reconnecting to another replica is not
    pushed anything. A value: nothing changes it once built, and what a server derives
    from it (framed responses) the server keeps, keyed by it weakly.

    `previous`, the snapshot this one replaces, is looked at once, here: unchanged types
    take over its mappings (equal content, same objects), so what streams hold stays
    identical to what the snapshot has across changes of other types; for changed types
    the names that differ are computed once (once per pair of sets, when the type is one
    shared set), so that `changed_names` lets each of thousands of streams look at those
    alone instead of diffing every resource (recompute only what a change touches). The
    previous snapshot itself is not kept.
    """

    __slots__ = ("__weakref__", "_by_type", "_changes", "_name_versions", "_sets", "_versions", "created")

    def __init__(
        self,
        resources: Iterable[Resource | ResourceSet],
        created: float | None = None,
        *,
        previous: Snapshot | None = None,
    ) -> None:
        sets: dict[str, list[ResourceSet]] = {}
        loose: dict[str, list[Resource]] = {}
        for item in resources:
            if isinstance(item, ResourceSet):
                if len(item):
                    sets.setdefault(item.type_url, []).append(item)
            else:
                loose.setdefault(item.type_url, []).append(item)
        for type_url, members in loose.items():
            named: dict[str, Resource] = {}
            _add(named, members)  # equal duplicates count once; different ones are an error
            sets.setdefault(type_url, []).append(ResourceSet(named.values()))
        self._sets: dict[str, tuple[ResourceSet, ...]] = {t: tuple(group) for t, group in sets.items()}
        self._versions = {
            type_url: format(sum(s.total for s in group) & _MASK, "032x")
            for type_url, group in self._sets.items()
        }
        #: Built when first asked for. Names unique across the parts of a type is the
        #: caller's promise (the reconciler's by construction); a merge checks it.
        self._by_type: dict[str, Mapping[str, Resource]] = {}
        #: `time.monotonic()` when the content was built: the start of push latency.
        self.created = time.monotonic() if created is None else created
        self._name_versions: dict[str, Mapping[str, str]] = {}
        #: Per changed type: the replaced snapshot's mappings and the names that differ.
        self._changes: dict[str, tuple[Mapping[str, Resource], Mapping[str, str] | None, frozenset[str]]] = {}
        if previous is not None:
            self._follow(previous)

    def _follow(self, previous: Snapshot) -> None:
        """Relate this snapshot to the one it replaces (see the class docstring)."""
        changed = self.changed_types(previous)
        for type_url in self._sets.keys() & previous._sets.keys():
            if type_url in changed:
                before = previous.resources(type_url)
                old_versions = previous._name_versions.get(type_url)
                old_sets, new_sets = previous._sets[type_url], self._sets[type_url]
                if len(old_sets) == 1 and len(new_sets) == 1:
                    names = new_sets[0].changed_since(old_sets[0])
                    if old_versions is None:
                        old_versions = old_sets[0]._versions
                else:
                    after = self.resources(type_url)
                    found = {name for name, resource in after.items() if _differs(before.get(name), resource)}
                    found.update(name for name in before if name not in after)
                    names = frozenset(found)
                self._changes[type_url] = (before, old_versions, names)
            else:
                self._sets[type_url] = previous._sets[type_url]
                if type_url in previous._by_type:
                    self._by_type[type_url] = previous._by_type[type_url]
                if type_url in previous._name_versions:
                    self._name_versions[type_url] = previous._name_versions[type_url]

    def parts(self) -> tuple[ResourceSet, ...]:
        """The sets this snapshot is made of (loose resources grouped by type): with
        `created`, enough to build an equal snapshot, e.g. one related to a `previous`."""
        return tuple(part for group in self._sets.values() for part in group)

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        """The resources of one type, by name (sorted); empty when the type is absent."""
        found = self._by_type.get(type_url)
        if found is None:
            group = self._sets.get(type_url)
            if group is None:
                return _EMPTY
            if len(group) == 1:
                found = group[0].mapping()
            else:
                named: dict[str, Resource] = {}
                for part in group:
                    _add(named, part.mapping().values())
                found = MappingProxyType(dict(sorted(named.items())))
            self._by_type[type_url] = found
        return found

    def versions(self, type_url: str) -> Mapping[str, str]:
        """The version of each resource of one type, by name; one read-only mapping per
        snapshot and type (per set, when the type is one set), so a stream whose client
        holds exactly this content can keep a reference to it instead of its own copy."""
        found = self._name_versions.get(type_url)
        if found is None:
            group = self._sets.get(type_url, ())
            if len(group) == 1 and type_url not in self._by_type:
                found = group[0].versions()
            else:
                named = self.resources(type_url)
                found = MappingProxyType({name: resource.version for name, resource in named.items()})
            self._name_versions[type_url] = found
        return found

    def version(self, type_url: str) -> str:
        """The content version of one type (an empty type has the empty-set version)."""
        found = self._versions.get(type_url)
        return found if found is not None else _EMPTY_VERSION

    def type_urls(self) -> frozenset[str]:
        return frozenset(self._sets)

    def changed_types(self, other: Snapshot | None) -> frozenset[str]:
        """The types whose content differs between `other` and this snapshot."""
        if other is None:
            return frozenset(self._versions)
        types = self.type_urls() | other.type_urls()
        return frozenset(t for t in types if self.version(t) != other.version(t))

    def changed_names(self, type_url: str, since: Mapping[str, object]) -> frozenset[str] | None:
        """The names of `type_url` whose resources differ between `since` and this snapshot,
        when `since` is the `resources()` or `versions()` mapping of the `previous` snapshot
        this one was built with; None otherwise, and the caller must compare everything."""
        found = self._changes.get(type_url)
        if found is None or (since is not found[0] and since is not found[1]):
            return None
        return found[2]

    def status(self) -> dict[str, dict[str, object]]:
        """Per type: version and resource names with their versions (debug view)."""
        return {
            type_url: {
                "version": self.version(type_url),
                "resources": {name: resource.version for name, resource in named.items()},
            }
            for type_url in sorted(self._sets)
            for named in (self.resources(type_url),)
        }


def _differs(before: Resource | None, resource: Resource) -> bool:
    return before is None or before.version != resource.version


_EMPTY_VERSION = set_version(())
