"""SMI objects: access (TrafficTarget), specs (HTTPRouteGroup, TCPRoute, UDPRoute), split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshcp.model.meta import Meta, ObjectRef


@dataclass(frozen=True, slots=True)
class IdentitySubject:
    """A ServiceAccount named in a TrafficTarget (its namespace defaults to the target's)."""

    name: str
    namespace: str


@dataclass(frozen=True, slots=True)
class TargetRule:
    """A rule of a TrafficTarget: a route object and, for HTTPRouteGroup, match names
    (empty: all matches of the group)."""

    kind: str  # HTTPRouteGroup | TCPRoute | UDPRoute
    name: str
    matches: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    meta: Meta
    destination: IdentitySubject
    sources: tuple[IdentitySubject, ...]
    rules: tuple[TargetRule, ...]

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("TrafficTarget", self.meta.namespace, self.meta.name)


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    """One named match of an HTTPRouteGroup. `path_regex` is anchored at the start only;
    `methods` may hold "*"; header values are full-match regexes."""

    name: str
    path_regex: str = ""
    methods: tuple[str, ...] = ()
    headers: Mapping[str, str] | None = None

    def __hash__(self) -> int:
        headers = tuple(sorted(self.headers.items())) if self.headers else ()
        return hash((self.name, self.path_regex, self.methods, headers))


@dataclass(frozen=True, slots=True)
class HTTPRouteGroup:
    meta: Meta
    matches: tuple[HTTPMatch, ...]

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("HTTPRouteGroup", self.meta.namespace, self.meta.name)


@dataclass(frozen=True, slots=True)
class TCPRoute:
    """`ports` empty: every port."""

    meta: Meta
    ports: tuple[int, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("TCPRoute", self.meta.namespace, self.meta.name)


@dataclass(frozen=True, slots=True)
class UDPRoute:
    """Accepted so manifests load; reported unsupported (Envoy sidecars here proxy TCP)."""

    meta: Meta
    ports: tuple[int, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("UDPRoute", self.meta.namespace, self.meta.name)


@dataclass(frozen=True, slots=True)
class SplitBackend:
    service: str
    weight: float


@dataclass(frozen=True, slots=True)
class SplitMatch:
    """A route object a split applies to (v1alpha4 `matches`): HTTPRouteGroup or TCPRoute."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    meta: Meta
    service: str  # the apex (root) service
    backends: tuple[SplitBackend, ...]
    matches: tuple[SplitMatch, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("TrafficSplit", self.meta.namespace, self.meta.name)
