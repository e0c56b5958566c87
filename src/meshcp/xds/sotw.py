"""The state-of-the-world ADS protocol for one stream, without any I/O.

Rules are numbered as in docs/xds-protocol.md. What SotW shares with delta (requests'
common steps, the response passes, nonces) is `stream.StreamProtocol`; here are its own:
subscriptions replaced by each request, full-state and named responses, and resuming a
reconnected client's version.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest
from meshcp.cache import resource_types
from meshcp.cache.diff import diff
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import Snapshot, set_version
from meshcp.xds.framing import nonce_field, sotw_body
from meshcp.xds.stream import NO_NAMES, WILDCARD, Outgoing, StreamProtocol, TypeState

_NOTHING: Mapping[str, Resource] = MappingProxyType({})


@dataclass(slots=True)
class _TypeState(TypeState):
    #: The content of the last response, by name: what is not sent again unchanged.
    #: Often the snapshot's own mapping, shared by every stream: replace, never mutate.
    held: Mapping[str, Resource] = field(default_factory=lambda: _NOTHING)
    #: Full-state types: the content the client last ACKed, i.e. what it really holds.
    #: Removals are computed from it, so a rejected resource is never "kept" again.
    accepted: Mapping[str, Resource] = field(default_factory=lambda: _NOTHING)
    #: Full-state types: send the whole subscription again (it changed). Set only with
    #: `quiet` cleared, and `quiet` is set only without it.
    force_all: bool = False
    #: Rule 11: version presented on reconnect, checked against the first snapshot.
    resume_version: str = ""

    def holds(self, name: str, resource: Resource) -> bool:
        return not _differs(self.held.get(name), resource)


class SotwProtocol(StreamProtocol[_TypeState, DiscoveryRequest]):
    """One StreamAggregatedResources stream's subscriptions and what it was sent."""

    kind = "sotw"
    __slots__ = ()

    # Requests ------------------------------------------------------------------

    def _new_state(self) -> _TypeState:
        return _TypeState()

    def _apply(self, request: DiscoveryRequest, type_url: str, state: _TypeState, first: bool) -> bool:
        nonce = request.response_nonce
        if nonce:
            acked = self._settle(type_url, state, nonce, request.error_detail)
            if acked is None:  # rule 5: stale, superseded by a newer response: ignored
                return False
            if acked:
                state.accepted = state.held
        self._subscribe(type_url, state, request, first)
        return True

    def _subscribe(self, type_url: str, state: _TypeState, request: DiscoveryRequest, first: bool) -> None:
        requested = request.resource_names
        explicit_wildcard = WILDCARD in requested
        names = self._shared.subscriptions(frozenset(requested).difference((WILDCARD,)))
        if not first and names is state.names and explicit_wildcard == state.explicit_wildcard:
            return  # an ACK repeating the subscription: nothing changes
        if first:
            state.legacy = (
                not names and not explicit_wildcard and resource_types.allows_legacy_wildcard(type_url)
            )
            full = resource_types.is_full_state(type_url)
            if full and request.version_info and not names:
                state.resume_version = request.version_info  # rule 11
        if names:
            state.legacy = False  # rule 8: once named, an empty list means "none"
        old_names, was_wildcard = state.names, state.wildcard
        state.names, state.explicit_wildcard = names, explicit_wildcard
        subscription_changed = names != old_names or was_wildcard != state.wildcard
        if subscription_changed or first:
            state.quiet = ""
        if subscription_changed and not first and resource_types.is_full_state(type_url):
            state.force_all = True
        if added := names - old_names:  # rule 9: newly requested names are sent even if sent before
            state.force = state.force | added
        if not state.wildcard and any(n not in names for n in state.held):
            state.held = {n: r for n, r in state.held.items() if n in names}  # held may be shared
            state.accepted = {n: r for n, r in state.accepted.items() if n in names}

    # Responses -----------------------------------------------------------------
    #
    # Full-state responses keep removed resources until every other update is ACKed,
    # then a last response (`_remove`) removes them.

    def _update(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> Outgoing | None:
        if resource_types.is_full_state(type_url):
            return self._full_state(type_url, state, snapshot, keep_removed=True)
        outgoing = self._named(type_url, state, snapshot)
        state.quiet = snapshot.version(type_url)
        return outgoing

    def _remove(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> Outgoing | None:
        if not resource_types.is_full_state(type_url):
            return None
        outgoing = self._full_state(type_url, state, snapshot, keep_removed=False)
        if not state.force and not state.force_all:
            state.quiet = snapshot.version(type_url)
        return outgoing

    def _full_state(
        self, type_url: str, state: _TypeState, snapshot: Snapshot, *, keep_removed: bool
    ) -> Outgoing | None:
        current = snapshot.resources(type_url)
        if state.wildcard:
            scope = current  # the snapshot's immutable mapping, shared by every stream
        else:
            scope = {name: current[name] for name in sorted(state.names) if name in current}
        if state.resume_version:
            resume, state.resume_version = state.resume_version, ""
            if state.wildcard and resume == snapshot.version(type_url):
                state.held = state.accepted = scope
                state.sent.version = state.sent.acked_version = resume
                return None
        never_sent = not state.sent.nonce and not state.sent.version  # even an empty set is an answer
        changed = (
            state.force_all
            or never_sent
            or any(_differs(state.held.get(name), resource) for name, resource in scope.items())
        )
        # Kept for make-before-break: what the client really holds (its last ACK) and
        # the snapshot no longer has. A NACKed resource was never held, so never kept.
        removed = {name: r for name, r in state.accepted.items() if name not in scope}
        content: Mapping[str, Resource]
        if keep_removed:
            if not changed:
                return None
            content = {**removed, **scope} if removed else scope
        else:
            if not changed and scope.keys() == state.held.keys():
                return None  # what was last sent is already exactly the snapshot
            content = scope
        state.force_all = False
        state.force = NO_NAMES
        held = state.held
        self._warm_endpoints(r for n, r in scope.items() if r.endpoints and _differs(held.get(n), r))
        state.held = content
        ordered = [content[name] for name in sorted(content)]
        if state.wildcard and (not keep_removed or not removed):  # the same bytes for the whole class
            version = snapshot.version(type_url)
            key: Hashable = ("sotw", type_url, version)
        else:
            version, key = set_version(ordered), None
        return self._send_framed(
            type_url, state, snapshot, version=version, key=key, resources=ordered, names=tuple(content)
        )

    def _named(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> Outgoing | None:
        current = snapshot.resources(type_url)
        held = state.held
        changed = snapshot.changed_names(type_url, held)
        # Only the names that can differ need their held versions (all, without `changed`).
        looked_at = held.keys() if changed is None else {*changed, *state.force}
        known = {name: held[name].version for name in looked_at if name in held}
        updated, _ = diff(current, known, None if state.wildcard else state.names, state.force, changed)
        state.force = NO_NAMES
        if not updated:
            return None
        # Every subscribed name the snapshot has is now held at its version: share the
        # snapshot's mapping instead of a per-stream copy, keeping only held names it lacks.
        lacking = {n: held[n] for n in looked_at if n in held and n not in current}
        state.held = {**current, **lacking} if lacking else current
        version = snapshot.version(type_url)
        names = tuple(r.name for r in updated)
        # The streams of a class ask for the same names (an Envoy asks for every cluster's
        # endpoints and every secret it references), so they are sent the same responses:
        # framed once per snapshot, like full-state ones.
        key = ("sotw-named", type_url, version, names)
        return self._send_framed(
            type_url, state, snapshot, version=version, key=key, resources=updated, names=names
        )

    def _send_framed(
        self,
        type_url: str,
        state: _TypeState,
        snapshot: Snapshot,
        *,
        version: str,
        key: Hashable | None,
        resources: list[Resource],
        names: tuple[str, ...],
    ) -> Outgoing:
        """Send `resources`; a response many streams are sent (`key` not None) is framed
        once per snapshot and server while it is being sent (`Shared.framed`)."""
        if key is None:
            body = sotw_body(version, type_url, resources)
        else:
            body = self._shared.framed.get(snapshot, key, lambda: sotw_body(version, type_url, resources))
        return self._send(
            type_url,
            state,
            snapshot,
            version=version,
            frame=lambda nonce: body + nonce_field(nonce),
            names=names,
        )


def _differs(held: Resource | None, resource: Resource) -> bool:
    return held is None or held.version != resource.version
