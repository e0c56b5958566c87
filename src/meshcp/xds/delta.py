"""The incremental (delta) ADS protocol for one stream, without any I/O.

Rules are numbered as in ../shared/XDS-PROTOCOL.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshcp import resource_types
from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest
from meshcp.cache.diff import diff
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import Snapshot
from meshcp.xds.framing import delta_response
from meshcp.xds.stream import NullObserver, Observer, Outgoing, Sent, error_message

WILDCARD = "*"


@dataclass(slots=True)
class _TypeState:
    names: set[str] = field(default_factory=set)
    explicit_wildcard: bool = False
    legacy: bool = False
    #: Versions the client holds, by name (from responses and initial_resource_versions).
    known: dict[str, str] = field(default_factory=dict)
    #: Subscribed names already reported as not existing (rule 16), so we say it once.
    absent: set[str] = field(default_factory=set)
    force: set[str] = field(default_factory=set)
    sent: Sent = field(default_factory=Sent)
    #: Snapshot version of this type with nothing left to send or remove (O(1) skip).
    quiet: str = ""

    @property
    def wildcard(self) -> bool:
        return self.explicit_wildcard or (self.legacy and not self.names)


class DeltaProtocol:
    """One DeltaAggregatedResources stream's subscriptions and what the client holds."""

    kind = "delta"

    def __init__(self, observer: Observer | None = None) -> None:
        self.node: Node | None = None
        self._observer = observer or NullObserver()
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
            state.known.update(request.initial_resource_versions)  # rule 14
        # Rule 13: subscriptions apply even when the nonce is stale.
        if request.resource_names_subscribe or request.resource_names_unsubscribe:
            state.quiet = ""
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                state.explicit_wildcard = True
            else:
                state.names.add(name)
                state.legacy = False
                state.force.add(name)  # rule 14: sent even if the client claims to hold it
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.explicit_wildcard = state.legacy = False
            elif name in state.names:  # rule 15: unknown names are ignored
                state.names.discard(name)
                state.absent.discard(name)
                state.force.discard(name)
                if not state.wildcard:
                    state.known.pop(name, None)
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
            updated, _ = diff(current, state.known, None if state.wildcard else state.names, state.force)
            state.force.clear()
            if not updated:
                continue
            unsettled = True
            if type_url == resource_types.CLUSTER:
                self._mark_endpoints(updated, state.known)
            for resource in updated:
                state.known[resource.name] = resource.version
                state.absent.discard(resource.name)
            out.append(self._send(type_url, state, snapshot, updated=updated))
            keys = current.keys()
            if state.known.keys() <= keys and (state.wildcard or state.names <= keys):
                state.quiet = snapshot.version(type_url)  # nothing can be left to remove
        if not unsettled:
            for type_url in order:
                state = self._types[type_url]
                if state.quiet == snapshot.version(type_url):
                    continue
                state.quiet = snapshot.version(type_url)
                current = snapshot.resources(type_url)
                _, removed = diff(current, state.known, None if state.wildcard else state.names)
                missing = [n for n in sorted(state.names) if n not in current and n not in state.known]
                missing = [n for n in missing if n not in state.absent]
                if not removed and not missing:
                    continue
                for name in removed:
                    del state.known[name]
                    if name in state.names:
                        state.absent.add(name)
                state.absent.update(missing)
                out.append(self._send(type_url, state, snapshot, removed=sorted({*removed, *missing})))
        for outgoing in out:
            self._observer.on_response(outgoing)
        return out

    def _mark_endpoints(self, updated: list[Resource], known: dict[str, str]) -> None:
        """Rule 19: an updated EDS cluster needs its endpoints again to finish warming."""
        endpoints = self._types.get(resource_types.ENDPOINT)
        if endpoints is None:
            return
        for resource in updated:
            if resource.endpoints and resource.name in known:
                endpoints.force.add(resource.endpoints)

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
        state.sent.record(outgoing, snapshot.created)
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
