"""What the reconciler hands the publisher: proxies that receive identical configuration.

A class is one identity with one set of local and upstream services; every proxy of the
class shares one snapshot. The reconciler produces classes, the publisher adds the
identity's certificate and the mesh's trust bundle and installs them, so the type sits
below both.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import ResourceSet
from meshcp.identity import Identity


@dataclass(frozen=True)
class ProxyClass:
    """Proxies that receive identical configuration: one identity, one set of services."""

    key: str
    identity: Identity
    #: The compiled, encoded non-secret configuration (clusters, endpoints, listeners, routes).
    resources: tuple[Resource, ...] = ()
    #: More of the configuration, as the shared pieces it was compiled in. Classes that
    #: share a piece share its `ResourceSet`, so publishing a change costs O(pieces), not
    #: O(resources), per class.
    sets: tuple[ResourceSet, ...] = ()

    def all_resources(self) -> list[Resource]:
        """`resources` and the members of `sets`: everything but the secrets."""
        return [*self.resources, *(resource for part in self.sets for resource in part)]
