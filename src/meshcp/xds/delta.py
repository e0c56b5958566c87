"""The incremental (delta) ADS protocol for one stream, without any I/O.

Rules are numbered as in docs/xds-protocol.md. What delta shares with SotW (requests'
common steps, the response passes, nonces) is `stream.StreamProtocol`; here are its own:
subscribe/unsubscribe, `initial_resource_versions`, per-resource updates and
`removed_resources`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest
from meshcp.cache import resource_types
from meshcp.cache.diff import diff
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import Snapshot
from meshcp.xds.framing import delta_response
from meshcp.xds.stream import NO_NAMES, WILDCARD, Interner, Outgoing, StreamProtocol, TypeState

_NOTHING: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class _TypeState(TypeState):
    """What one stream knows of one type.

    `known` is replaced, never mutated in place, except once `own_known` made it the
    stream's own: streams that hold the same versions share one object.
    """

    #: Versions the client holds, by name (from responses and initial_resource_versions).
    #: Either the stream's own dict or, while the client holds exactly a snapshot's content
    #: of the type, that snapshot's read-only `versions()` mapping.
    known: Mapping[str, str] = field(default_factory=lambda: _NOTHING)
    #: Subscribed names already reported as not existing (rule 16), so we say it once.
    absent: frozenset[str] | set[str] = NO_NAMES

    def holds(self, name: str, resource: Resource) -> bool:
        return self.known.get(name) == resource.version

    def details(self) -> dict[str, object]:
        return {"resources_held": len(self.known)}

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


class DeltaProtocol(StreamProtocol[_TypeState, DeltaDiscoveryRequest]):
    """One DeltaAggregatedResources stream's subscriptions and what the client holds."""

    kind = "delta"
    __slots__ = ()

    # Requests ------------------------------------------------------------------

    def _new_state(self) -> _TypeState:
        return _TypeState()

    def _apply(self, request: DeltaDiscoveryRequest, type_url: str, state: _TypeState, first: bool) -> bool:
        subscribe, unsubscribe = request.resource_names_subscribe, request.resource_names_unsubscribe
        if first:
            state.legacy = not subscribe and resource_types.allows_legacy_wildcard(type_url)
            if request.initial_resource_versions:
                state.known = dict(request.initial_resource_versions)  # rule 14
        # Rule 13: subscriptions apply even when the nonce is stale.
        if subscribe or unsubscribe:
            state.quiet = ""
        if subscribe:
            self._subscribe(state, subscribe)
        if unsubscribe:
            self._unsubscribe(state, unsubscribe)
        nonce = request.response_nonce
        if nonce:
            self._settle(type_url, state, nonce, request.error_detail)
        return first or bool(subscribe or unsubscribe or nonce)

    def _subscribe(self, state: _TypeState, subscribe: list[str]) -> None:
        named = [name for name in subscribe if name != WILDCARD]
        if len(named) < len(subscribe):
            state.explicit_wildcard = True
        if named:
            state.legacy = False
            state.subscribe(self._shared.subscriptions, added=named)
            state.force = state.force.union(named)  # rule 14: sent even if the client holds it

    def _unsubscribe(self, state: _TypeState, unsubscribe: list[str]) -> None:
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

    # Responses -----------------------------------------------------------------

    def _update(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> Outgoing | None:
        current = snapshot.resources(type_url)
        changed = snapshot.changed_names(type_url, state.known)
        subscribed = None if state.wildcard else state.names
        updated, _ = diff(current, state.known, subscribed, state.force, changed)
        state.force = NO_NAMES
        if not updated:
            return None
        if type_url == resource_types.CLUSTER:
            known = state.known
            self._warm_endpoints(r for r in updated if r.name in known)
        state.hold(updated, snapshot, type_url, changed)
        if state.absent:
            state.absent = state.absent.difference(r.name for r in updated)
        outgoing = self._send_delta(type_url, state, snapshot, updated, ())
        keys = current.keys()
        held_all = state.known is snapshot.versions(type_url) or state.known.keys() <= keys
        if held_all and (state.wildcard or state.names <= keys):
            state.quiet = snapshot.version(type_url)  # nothing can be left to remove
        return outgoing

    def _remove(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> Outgoing | None:
        """Rule 16: deletions and subscribed names that do not exist, each reported once."""
        state.quiet = snapshot.version(type_url)
        current = snapshot.resources(type_url)
        changed = snapshot.changed_names(type_url, state.known)
        subscribed = None if state.wildcard else state.names
        _, removed = diff(current, state.known, subscribed, changed=changed)
        missing = [n for n in sorted(state.names) if n not in current and n not in state.known]
        missing = [n for n in missing if n not in state.absent]
        if not removed and not missing:
            return None
        if removed:
            state.forget(removed, snapshot, type_url)
        newly_absent = [name for name in removed if name in state.names] + missing
        if newly_absent:
            state.absent = state.absent.union(newly_absent)
        return self._send_delta(type_url, state, snapshot, [], tuple(sorted({*removed, *missing})))

    def _send_delta(
        self,
        type_url: str,
        state: _TypeState,
        snapshot: Snapshot,
        updated: list[Resource],
        removed: tuple[str, ...],
    ) -> Outgoing:
        version = snapshot.version(type_url)
        return self._send(
            type_url,
            state,
            snapshot,
            version=version,
            frame=lambda nonce: delta_response(version, type_url, nonce, updated, removed),
            names=tuple(r.name for r in updated),
            removed=removed,
        )
