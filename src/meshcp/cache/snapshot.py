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

    __slots__ = ("_by_type", "_name_versions", "_versions", "created", "memo")

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

    def status(self) -> dict[str, dict[str, object]]:
        """Per type: version and resource names with their versions (debug view)."""
        return {
            type_url: {
                "version": self.version(type_url),
                "resources": {name: resource.version for name, resource in named.items()},
            }
            for type_url, named in self._by_type.items()
        }


_EMPTY_VERSION = set_version(())
