"""The incremental (delta) ADS protocol for one stream, without any I/O.

Rules are numbered as in ../shared/XDS-PROTOCOL.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest
from meshcp.cache import resource_types
from meshcp.cache.diff import diff
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import Snapshot
from meshcp.xds.framing import delta_response
from meshcp.xds.stream import Interner, NullObserver, Observer, Outgoing, Sent, Shared, error_message

WILDCARD = "*"
_NO_NAMES: frozenset[str] = frozenset()
_NOTHING: Mapping[str, str] = MappingProxyType({})

#: Subscriptions, shared by every stream subscribed to the same names.


@dataclass(slots=True)
class _TypeState:
    """What one stream knows of one type.

    Every set and mapping here is replaced, never mutated in place, except `known` once
    `own_known` made it the stream's own: most streams of a class subscribe to the same
    names and hold the same versions, so they share one object instead of a copy each.
    """

    #: Interned by the server's `Shared.subscriptions`.
    names: frozenset[str] = _NO_NAMES
    explicit_wildcard: bool = False
    legacy: bool = False
    #: Versions the client holds, by name (from responses and initial_resource_versions).
    #: Either the stream's own dict or, while the client holds exactly a snapshot's content
    #: of the type, that snapshot's read-only `versions()` mapping.
    known: Mapping[str, str] = field(default_factory=lambda: _NOTHING)
    #: Subscribed names already reported as not existing (rule 16), so we say it once.
    absent: frozenset[str] | set[str] = _NO_NAMES
    force: frozenset[str] | set[str] = _NO_NAMES
    sent: Sent = field(default_factory=Sent)
    #: Snapshot version of this type with nothing left to send or remove (O(1) skip).
    quiet: str = ""

    @property
    def wildcard(self) -> bool:
        return self.explicit_wildcard or (self.legacy and not self.names)

    def own_known(self) -> dict[str, str]:
        """`known` as a dict this stream may change (copied first if shared)."""
        known = self.known
        if not isinstance(known, dict):
            known = self.known = dict(known)
        return known

    def share_known(self, snapshot: Snapshot, type_url: str) -> None:
        """Swap `known` for the snapshot's mapping when they are equal.

        Equality follows without comparing versions: after an update or removal pass every
        subscribed name the snapshot has is held at its version, so equal key sets covered
        by the subscription mean equal content.
        """
        versions = snapshot.versions(type_url)
        if self.known is versions or self.known.keys() != versions.keys():
            return
        if self.wildcard or versions.keys() <= self.names:
            self.known = versions

    def hold(
        self, updated: list[Resource], snapshot: Snapshot, type_url: str, changed: frozenset[str] | None
    ) -> None:
        """Record that the client is sent `updated`, which the diff took from `snapshot`
        knowing only `changed` could differ (or everything, with None)."""
        current = snapshot.resources(type_url)
        if changed is not None and all(n in current and (self.wildcard or n in self.names) for n in changed):
            # It held the replaced snapshot's content and gets every difference: no copy.
            self.known = snapshot.versions(type_url)
            return
        known = self.own_known()
        for resource in updated:
            known[resource.name] = resource.version
        self.share_known(snapshot, type_url)

    def forget(self, removed: list[str], snapshot: Snapshot, type_url: str) -> None:
        known = self.own_known()
        for name in removed:
            del known[name]
        self.share_known(snapshot, type_url)

    def subscribe(
        self, intern: Interner[frozenset[str]], added: Iterable[str] = (), removed: Iterable[str] = ()
    ) -> None:
        self.names = intern(self.names.union(added).difference(removed))


class DeltaProtocol:
    """One DeltaAggregatedResources stream's subscriptions and what the client holds."""

    kind = "delta"
    __slots__ = ("_nonce", "_observer", "_shared", "_types", "node")

    def __init__(self, observer: Observer | None = None, shared: Shared | None = None) -> None:
        self.node: Node | None = None
        self._observer = observer or NullObserver()
        self._shared = shared or Shared()
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0

    def receive(self, request: DeltaDiscoveryRequest) -> bool:
        """Apply one request; False when there is nothing to reconsider."""
        if self.node is None and request.node is not None:
            self.node = request.node
        type_url = request.type_url
        if not type_url:
            return False
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._types[type_url] = _TypeState()
            state.legacy = not request.resource_names_subscribe and resource_types.allows_legacy_wildcard(
                type_url
            )
            if request.initial_resource_versions:
                state.known = dict(request.initial_resource_versions)  # rule 14
        # Rule 13: subscriptions apply even when the nonce is stale.
        subscribe, unsubscribe = request.resource_names_subscribe, request.resource_names_unsubscribe
        if subscribe or unsubscribe:
            state.quiet = ""
        if subscribe:
            named = [name for name in subscribe if name != WILDCARD]
            if len(named) < len(subscribe):
                state.explicit_wildcard = True
            if named:
                state.legacy = False
                state.subscribe(self._shared.subscriptions, added=named)
                state.force = state.force.union(named)  # rule 14: sent even if the client holds it
        if unsubscribe:
            if WILDCARD in unsubscribe:
                state.explicit_wildcard = state.legacy = False
            dropped = state.names.intersection(unsubscribe)  # rule 15: unknown names are ignored
            if dropped:
                state.subscribe(self._shared.subscriptions, removed=dropped)
                state.absent = state.absent - dropped
                state.force = state.force - dropped
                if not state.wildcard and any(name in state.known for name in dropped):
                    known = state.own_known()
                    for name in dropped:
                        known.pop(name, None)
        nonce = request.response_nonce
        if nonce:
            if nonce != state.sent.nonce:
                self._observer.on_stale(type_url)
            else:
                state.sent.settle(
                    nonce, error_message(request.error_detail), self.node, type_url, self._observer
                )
        return (
            True
            if first
            else bool(request.resource_names_subscribe or request.resource_names_unsubscribe or nonce)
        )

    def responses(self, snapshot: Snapshot) -> list[Outgoing]:
        """Updates in make-before-break order; removals once every update is ACKed (rule 18)."""
        out: list[Outgoing] = []
        unsettled = False
        order = sorted(self._types, key=resource_types.push_rank)
        for type_url in order:
            state = self._types[type_url]
            if state.sent.outstanding:
                unsettled = True
                continue
            if state.quiet == snapshot.version(type_url) and not state.force:
                continue
            current = snapshot.resources(type_url)
            changed = snapshot.changed_names(type_url, state.known)
            subscribed = None if state.wildcard else state.names
            updated, _ = diff(current, state.known, subscribed, state.force, changed)
            state.force = _NO_NAMES
            if not updated:
                continue
            unsettled = True
            if type_url == resource_types.CLUSTER:
                self._mark_endpoints(updated, state.known)
            state.hold(updated, snapshot, type_url, changed)
            if state.absent:
                state.absent = state.absent.difference(r.name for r in updated)
            out.append(self._send(type_url, state, snapshot, updated=updated))
            keys = current.keys()
            held_all = state.known is snapshot.versions(type_url) or state.known.keys() <= keys
            if held_all and (state.wildcard or state.names <= keys):
                state.quiet = snapshot.version(type_url)  # nothing can be left to remove
        if not unsettled:
            for type_url in order:
                state = self._types[type_url]
                if state.quiet == snapshot.version(type_url):
                    continue
                state.quiet = snapshot.version(type_url)
                current = snapshot.resources(type_url)
                changed = snapshot.changed_names(type_url, state.known)
                subscribed = None if state.wildcard else state.names
                _, removed = diff(current, state.known, subscribed, changed=changed)
                missing = [n for n in sorted(state.names) if n not in current and n not in state.known]
                missing = [n for n in missing if n not in state.absent]
                if not removed and not missing:
                    continue
                if removed:
                    state.forget(removed, snapshot, type_url)
                newly_absent = [name for name in removed if name in state.names] + missing
                if newly_absent:
                    state.absent = state.absent.union(newly_absent)
                out.append(self._send(type_url, state, snapshot, removed=sorted({*removed, *missing})))
        for outgoing in out:
            self._observer.on_response(outgoing)
        return out

    def _mark_endpoints(self, updated: list[Resource], known: Mapping[str, str]) -> None:
        """Rule 19: an updated EDS cluster needs its endpoints again to finish warming."""
        endpoints = self._types.get(resource_types.ENDPOINT)
        if endpoints is None:
            return
        for resource in updated:
            if resource.endpoints and resource.name in known:
                endpoints.force = {*endpoints.force, resource.endpoints}

    def _send(
        self,
        type_url: str,
        state: _TypeState,
        snapshot: Snapshot,
        updated: list[Resource] | None = None,
        removed: list[str] | None = None,
    ) -> Outgoing:
        resources = updated or []
        self._nonce += 1
        nonce = str(self._nonce)
        version = snapshot.version(type_url)
        payload = delta_response(version, type_url, nonce, resources, removed or ())
        outgoing = Outgoing(
            type_url, nonce, version, payload, tuple(r.name for r in resources), tuple(removed or ())
        )
        state.sent.record(outgoing, snapshot.created, self._shared.sent_names)
        return outgoing

    def holds_current(self, type_url: str, snapshot: Snapshot) -> bool:
        """Whether the client has ACKed the snapshot's content of every name it subscribed to."""
        state = self._types.get(type_url)
        if state is None:
            return True
        if state.sent.outstanding or state.sent.acked_version != state.sent.version:
            return False
        current = snapshot.resources(type_url)
        names = current.keys() if state.wildcard else state.names
        return all(state.known.get(name) == current[name].version for name in names if name in current)

    def status(self) -> dict[str, object]:
        return {
            resource_types.short_name(type_url): {
                "wildcard": state.wildcard,
                "names": sorted(state.names),
                "resources_held": len(state.known),
                **state.sent.status(),
            }
            for type_url, state in sorted(
                self._types.items(), key=lambda item: resource_types.push_rank(item[0])
            )
        }
