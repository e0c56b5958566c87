"""The state-of-the-world ADS protocol for one stream, without any I/O.

Rules are numbered as in ../shared/XDS-PROTOCOL.md. `receive` applies a request,
`responses` says what to send for a snapshot; the adapter moves bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest
from meshcp.cache import resource_types
from meshcp.cache.diff import diff
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import Snapshot, set_version
from meshcp.xds.framing import nonce_field, sotw_body
from meshcp.xds.stream import NullObserver, Observer, Outgoing, Sent, Shared, error_message

WILDCARD = "*"
_NOTHING: Mapping[str, Resource] = MappingProxyType({})
_NO_NAMES: frozenset[str] = frozenset()


@dataclass(slots=True)
class _TypeState:
    #: Shared by every stream with the same subscription (`Shared.subscriptions`): never mutate.
    names: Set[str] = frozenset()
    explicit_wildcard: bool = False
    #: Legacy wildcard: the first request had no names (Listener/Cluster only).
    legacy: bool = False
    #: The content of the last response, by name: what is not sent again unchanged.
    #: Often the snapshot's own mapping, shared by every stream: replace, never mutate.
    held: Mapping[str, Resource] = field(default_factory=lambda: _NOTHING)
    #: Full-state types: the content the client last ACKed, i.e. what it really holds.
    #: Removals are computed from it, so a rejected resource is never "kept" again.
    accepted: Mapping[str, Resource] = field(default_factory=lambda: _NOTHING)
    #: Names to send even if held unchanged; replaced, never mutated (mostly empty and shared).
    force: Set[str] = _NO_NAMES
    force_all: bool = False
    #: Rule 11: version presented on reconnect, checked against the first snapshot.
    resume_version: str = ""
    sent: Sent = field(default_factory=Sent)
    #: The snapshot version of this type for which nothing is left to send (until the
    #: subscription changes or names are forced): lets `responses` skip it in O(1).
    quiet: str = ""

    @property
    def wildcard(self) -> bool:
        return self.explicit_wildcard or (self.legacy and not self.names)


class SotwProtocol:
    """One StreamAggregatedResources stream's subscriptions and what it was sent."""

    kind = "sotw"
    __slots__ = ("_nonce", "_observer", "_shared", "_types", "node")

    def __init__(self, observer: Observer | None = None, shared: Shared | None = None) -> None:
        self.node: Node | None = None
        self._observer = observer or NullObserver()
        self._shared = shared or Shared()
        self._types: dict[str, _TypeState] = {}
        self._nonce = 0

    # Requests ------------------------------------------------------------------

    def receive(self, request: DiscoveryRequest) -> bool:
        """Apply one request; False when it is ignored (stale nonce, no type)."""
        if self.node is None and request.node is not None:
            self.node = request.node  # rule 2: only the first request must carry it
        type_url = request.type_url
        if not type_url:
            return False
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._types[type_url] = _TypeState()
        nonce = request.response_nonce
        if nonce:
            if nonce != state.sent.nonce:  # rule 5: stale, superseded by a newer response
                self._observer.on_stale(type_url)
                return False
            acked = state.sent.settle(
                nonce, error_message(request.error_detail), self.node, type_url, self._observer
            )
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

    def responses(self, snapshot: Snapshot) -> list[Outgoing]:
        """Everything to send now for `snapshot`, in make-before-break order (rule 18).

        A type with a response awaiting its ACK gets nothing new (rule 21: one
        outstanding push per type; the newest content goes out after the ACK).
        Full-state responses keep removed resources until every other update is
        ACKed, then a last response removes them.
        """
        out: list[Outgoing] = []
        unsettled = False
        for type_url in sorted(self._types, key=resource_types.push_rank):
            state = self._types[type_url]
            if state.sent.outstanding:
                unsettled = True
                continue
            if state.quiet == snapshot.version(type_url) and not state.force and not state.force_all:
                continue
            if resource_types.is_full_state(type_url):
                outgoing = self._full_state(type_url, state, snapshot, keep_removed=True)
            else:
                outgoing = self._named(type_url, state, snapshot)
                state.quiet = snapshot.version(type_url)
            if outgoing is not None:
                out.append(outgoing)
                unsettled = True
        if not unsettled:
            for type_url in sorted(self._types, key=resource_types.push_rank):
                state = self._types[type_url]
                if resource_types.is_full_state(type_url) and state.quiet != snapshot.version(type_url):
                    outgoing = self._full_state(type_url, state, snapshot, keep_removed=False)
                    if outgoing is not None:
                        out.append(outgoing)
                    if not state.force and not state.force_all:
                        state.quiet = snapshot.version(type_url)
        for outgoing in out:
            self._observer.on_response(outgoing)
        return out

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
        state.force = _NO_NAMES
        self._mark_endpoints(scope, state.held)
        state.held = content
        ordered = [content[name] for name in sorted(content)]
        if state.wildcard and (not keep_removed or not removed):  # the same bytes for the whole class
            version = snapshot.version(type_url)
            key = ("sotw", type_url, version)
            body = snapshot.memo.get(key)
            if not isinstance(body, bytes):
                body = snapshot.memo[key] = sotw_body(version, type_url, ordered)
        else:
            version = set_version(ordered)
            body = sotw_body(version, type_url, ordered)
        return self._send(type_url, state, snapshot, version=version, body=body, names=tuple(content))

    def _mark_endpoints(self, scope: Mapping[str, Resource], held: Mapping[str, Resource]) -> None:
        """Rule 19: a changed EDS cluster warms only after its endpoints arrive again."""
        endpoints = self._types.get(resource_types.ENDPOINT)
        if endpoints is None:
            return
        for name, resource in scope.items():
            if resource.endpoints and _differs(held.get(name), resource):
                endpoints.force = {*endpoints.force, resource.endpoints}

    def _named(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> Outgoing | None:
        current = snapshot.resources(type_url)
        held = state.held
        changed = snapshot.changed_names(type_url, held)
        # Only the names that can differ need their held versions (all, without `changed`).
        looked_at = held.keys() if changed is None else {*changed, *state.force}
        known = {name: held[name].version for name in looked_at if name in held}
        updated, _ = diff(current, known, None if state.wildcard else state.names, state.force, changed)
        state.force = _NO_NAMES
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
        body = snapshot.memo.get(key)
        if not isinstance(body, bytes):
            body = snapshot.memo[key] = sotw_body(version, type_url, updated)
        return self._send(type_url, state, snapshot, version=version, body=body, names=names)

    def _send(
        self,
        type_url: str,
        state: _TypeState,
        snapshot: Snapshot,
        *,
        version: str,
        body: bytes,
        names: tuple[str, ...],
    ) -> Outgoing:
        self._nonce += 1
        nonce = str(self._nonce)
        outgoing = Outgoing(type_url, nonce, version, body + nonce_field(nonce), names)
        state.sent.record(outgoing, snapshot.created, self._shared.sent_names)
        return outgoing

    # Introspection -------------------------------------------------------------

    def holds_current(self, type_url: str, snapshot: Snapshot) -> bool:
        """Whether the client has ACKed the snapshot's content of every name it requested
        (vacuously true for a type it never asked for)."""
        state = self._types.get(type_url)
        if state is None:
            return True
        if state.sent.outstanding or state.sent.acked_version != state.sent.version:
            return False
        current = snapshot.resources(type_url)
        names = current.keys() if state.wildcard else state.names
        return all(not _differs(state.held.get(name), current[name]) for name in names if name in current)

    def status(self) -> dict[str, object]:
        """Per type: subscription and send/ACK/NACK state (for /debug/proxies)."""
        return {
            resource_types.short_name(type_url): {
                "wildcard": state.wildcard,
                "names": sorted(state.names),
                **state.sent.status(),
            }
            for type_url, state in sorted(
                self._types.items(), key=lambda item: resource_types.push_rank(item[0])
            )
        }


def _differs(held: Resource | None, resource: Resource) -> bool:
    return held is None or held.version != resource.version
