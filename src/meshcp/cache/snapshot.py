"""An immutable set of resources for one proxy class, with per-type content versions."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType

from meshcp.cache.resource import Resource

_EMPTY: Mapping[str, Resource] = MappingProxyType({})


def set_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources: a hash over its sorted (name, version) pairs."""
    digest = hashlib.sha256()
    for resource in sorted(resources, key=lambda item: item.name):
        digest.update(resource.name.encode())
        digest.update(b"\0")
        digest.update(resource.version.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


class Snapshot:
    """What every proxy of one class should hold, by type URL and name.

    Two snapshots with equal content have equal versions in any process, so a proxy
    reconnecting to another replica is not pushed anything. `memo` lets the server
    keep framed responses next to the content they were framed from; it is dropped
    with the snapshot.
    """

    __slots__ = ("_by_type", "_changes", "_name_versions", "_versions", "created", "memo")

    def __init__(self, resources: Iterable[Resource], created: float | None = None) -> None:
        by_type: dict[str, dict[str, Resource]] = {}
        for resource in resources:
            named = by_type.setdefault(resource.type_url, {})
            if resource.name in named and named[resource.name].version != resource.version:
                raise ValueError(f"two different {resource.type_url} resources named {resource.name!r}")
            named[resource.name] = resource
        self._by_type: dict[str, Mapping[str, Resource]] = {
            type_url: MappingProxyType(dict(sorted(named.items()))) for type_url, named in by_type.items()
        }
        self._versions = {type_url: set_version(named.values()) for type_url, named in self._by_type.items()}
        #: `time.monotonic()` when the content was built: the start of push latency.
        self.created = time.monotonic() if created is None else created
        self.memo: dict[Hashable, object] = {}
        self._name_versions: dict[str, Mapping[str, str]] = {}
        #: Per changed type: the replaced snapshot's mappings and the names that differ.
        self._changes: dict[str, tuple[Mapping[str, Resource], Mapping[str, str] | None, frozenset[str]]] = {}

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        """The resources of one type, by name (sorted); empty when the type is absent."""
        return self._by_type.get(type_url, _EMPTY)

    def versions(self, type_url: str) -> Mapping[str, str]:
        """The version of each resource of one type, by name; one read-only mapping per
        snapshot and type, so a stream whose client holds exactly this content can keep a
        reference to it instead of its own copy."""
        found = self._name_versions.get(type_url)
        if found is None:
            named = self.resources(type_url)
            found = MappingProxyType({name: resource.version for name, resource in named.items()})
            self._name_versions[type_url] = found
        return found

    def version(self, type_url: str) -> str:
        """The content version of one type (an empty type has the empty-set version)."""
        found = self._versions.get(type_url)
        return found if found is not None else _EMPTY_VERSION

    def type_urls(self) -> frozenset[str]:
        return frozenset(self._by_type)

    def changed_types(self, other: Snapshot | None) -> frozenset[str]:
        """The types whose content differs between `other` and this snapshot."""
        if other is None:
            return frozenset(self._versions)
        types = self.type_urls() | other.type_urls()
        return frozenset(t for t in types if self.version(t) != other.version(t))

    def follow(self, previous: Snapshot | None) -> frozenset[str]:
        """Relate this snapshot to the one it replaces; return the types whose content changed.

        Unchanged types take over the previous mappings (equal content, same objects), so
        what streams hold stays identical to what the snapshot has across changes of other
        types. For changed types, the names that differ are computed here, once per class,
        so that `changed_names` lets each of thousands of streams look at those alone
        instead of diffing every resource (recompute only what a change touches).
        """
        changed = self.changed_types(previous)
        if previous is None:
            return changed
        for type_url in self._by_type.keys() & previous._by_type.keys():
            if type_url in changed:
                before, after = previous._by_type[type_url], self._by_type[type_url]
                names = {name for name, resource in after.items() if _differs(before.get(name), resource)}
                names.update(name for name in before if name not in after)
                old_versions = previous._name_versions.get(type_url)
                self._changes[type_url] = (before, old_versions, frozenset(names))
            else:
                self._by_type[type_url] = previous._by_type[type_url]
                if type_url in previous._name_versions:
                    self._name_versions[type_url] = previous._name_versions[type_url]
        return changed

    def changed_names(self, type_url: str, since: Mapping[str, object]) -> frozenset[str] | None:
        """The names of `type_url` whose resources differ between `since` and this snapshot,
        when `since` is the `resources()` or `versions()` mapping of the snapshot this one
        followed (see `follow`); None otherwise, and the caller must compare everything."""
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
            for type_url, named in self._by_type.items()
        }


def _differs(before: Resource | None, resource: Resource) -> bool:
    return before is None or before.version != resource.version


_EMPTY_VERSION = set_version(())
