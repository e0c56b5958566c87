"""What both ADS stream kinds share: one stream's per-type state, its requests' common
steps, the response passes, outgoing responses, NACK records, the observer.

Rules are numbered as in docs/xds-protocol.md. `sotw` and `delta` keep only their own
protocol's rules; everything the two do alike is written once here.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest, DiscoveryRequest
from meshcp._proto.google.rpc import Status
from meshcp.cache import resource_types
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import Snapshot
from meshcp.xds.framed_bodies import FramedBodies

WILDCARD = "*"
NO_NAMES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One framed response, ready for the wire."""

    type_url: str
    nonce: str
    version: str
    payload: bytes
    names: tuple[str, ...]
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A rejected response, kept for the debug endpoint and logs."""

    nonce: str
    version: str
    message: str
    names: tuple[str, ...]
    at: float = field(default_factory=time.time)


class Observer(Protocol):
    """Receives protocol events (metrics and logs); must not block."""

    def on_ack(self, type_url: str, latency: float) -> None: ...

    def on_nack(self, node_id: str, type_url: str, nack: Nack) -> None: ...

    def on_stale(self, type_url: str) -> None: ...

    def on_response(self, outgoing: Outgoing) -> None: ...


class NullObserver:
    """An observer that records nothing (tests of the pure protocol)."""

    def on_ack(self, type_url: str, latency: float) -> None:
        pass

    def on_nack(self, node_id: str, type_url: str, nack: Nack) -> None:
        pass

    def on_stale(self, type_url: str) -> None:
        pass

    def on_response(self, outgoing: Outgoing) -> None:
        pass


_T = TypeVar("_T", bound=Hashable)


class Interner(Generic[_T]):
    """Hands out one shared object per distinct value.

    Thousands of streams subscribe to, and are sent, the same name sets; each stream
    keeping its own equal copy was most of its memory. Bounded: when full it starts
    over, which only means later equal values get a new shared object.
    """

    __slots__ = ("_limit", "_values")

    def __init__(self, limit: int = 4096) -> None:
        self._values: dict[_T, _T] = {}
        self._limit = limit

    def __call__(self, value: _T) -> _T:
        found = self._values.get(value)
        if found is None:
            if len(self._values) >= self._limit:
                self._values.clear()
            found = self._values[value] = value
        return found


@dataclass(slots=True)
class Shared:
    """Values thousands of streams hold equal copies of, interned once per server.

    Per server, not per module: two servers in one process (or two tests) share nothing,
    and nothing outlives the server that filled it.
    """

    #: Subscribed name sets (SotW and delta).
    subscriptions: Interner[frozenset[str]] = field(default_factory=Interner)
    #: Names of sent responses (kept for NACK records).
    sent_names: Interner[tuple[str, ...]] = field(default_factory=Interner)
    #: Response bodies framed from a snapshot, by the protocol's key: the streams sent the
    #: same response share one framing while it is being sent (`xds.framed_bodies`). Kept
    #: here, not on the snapshot (a value that knows nothing of the wire).
    framed: FramedBodies = field(default_factory=FramedBodies)
    #: Monotonic seconds, for push latency (rule 22); a test passes its own clock.
    clock: Callable[[], float] = time.monotonic


def error_message(status: Status | None) -> str | None:
    """The NACK message of a request's `error_detail`, or None for an ACK."""
    if status is None or (not status.code and not status.message):
        return None
    return status.message or f"error code {status.code}"


@dataclass(slots=True)
class Sent:
    """Bookkeeping of the last response of one type on one stream."""

    nonce: str = ""
    version: str = ""
    names: tuple[str, ...] = ()
    #: When the stream first had the content sent due (a change it saw, or a request),
    #: by `Shared.clock`: push latency runs from there to the ACK (rule 22).
    since: float = 0.0
    outstanding: bool = False
    acked_version: str = ""
    nack: Nack | None = None

    def settle(
        self,
        nonce: str,
        error: str | None,
        node: Node | None,
        type_url: str,
        observer: Observer,
        *,
        now: float,
    ) -> bool | None:
        """Apply an ACK or NACK of the latest response (`nonce` already checked as current).

        Returns True for an ACK, False for a NACK, None when nothing was awaiting one
        (a later request repeating the same nonce to change its subscription).
        """
        was_outstanding, self.outstanding = self.outstanding, False
        if not was_outstanding:
            return None
        if error is None:
            self.acked_version = self.version
            observer.on_ack(type_url, max(0.0, now - self.since))
            return True
        self.nack = Nack(nonce, self.version, error, self.names)
        observer.on_nack(node.id if node is not None else "", type_url, self.nack)
        return False

    def record(self, outgoing: Outgoing, since: float, intern: Interner[tuple[str, ...]]) -> None:
        self.nonce = outgoing.nonce
        self.version = outgoing.version
        self.names = intern(outgoing.names)
        self.since = since
        self.outstanding = True

    def status(self) -> dict[str, object]:
        nack = self.nack
        return {
            "version_sent": self.version,
            "version_acked": self.acked_version,
            "nonce": self.nonce,
            "awaiting_ack": self.outstanding,
            "last_nack": None
            if nack is None
            else {
                "version": nack.version,
                "message": nack.message,
                "resources": list(nack.names),
                "at": nack.at,
            },
        }


@dataclass(slots=True)
class TypeState:
    """What one stream knows of one type, in either protocol.

    Sets here are replaced, never mutated in place: most streams of a class subscribe to
    the same names, so they share one object instead of a copy each.
    """

    #: Interned by the server's `Shared.subscriptions`.
    names: frozenset[str] = NO_NAMES
    explicit_wildcard: bool = False
    #: Legacy wildcard: the first request named nothing (Listener/Cluster only, rule 8).
    legacy: bool = False
    #: Names to send even if the client holds them unchanged (rules 9, 14 and 19).
    force: frozenset[str] | set[str] = NO_NAMES
    sent: Sent = field(default_factory=Sent)
    #: The snapshot version of this type for which nothing is left to send (until the
    #: subscription changes or names are forced): lets `responses` skip the type in O(1).
    #: Whatever else makes a type due must clear it.
    quiet: str = ""
    #: The snapshot version of this type the stream last looked at (`responses`).
    seen: str = ""
    #: Since when (`Shared.clock`) the stream has had something of this type to send that
    #: it has not sent yet; None when nothing is pending. A response carries it as
    #: `Sent.since` (rule 22).
    due: float | None = None

    @property
    def wildcard(self) -> bool:
        return self.explicit_wildcard or (self.legacy and not self.names)

    def holds(self, name: str, resource: Resource) -> bool:
        """Whether the client holds `resource` under `name` at its version."""
        raise NotImplementedError

    def details(self) -> dict[str, object]:
        """Protocol-specific entries of the debug view."""
        return {}


StateT = TypeVar("StateT", bound=TypeState)
RequestT = TypeVar("RequestT", bound=DiscoveryRequest | DeltaDiscoveryRequest)


class StreamProtocol(abc.ABC, Generic[StateT, RequestT]):
    """One ADS stream's subscriptions and what it was sent, without any I/O.

    `receive` applies a request, `responses` says what to send for a snapshot; the
    adapter moves bytes. A subclass supplies its protocol's rules: how a request changes
    a type's subscription, and what one type's update and removal responses are.
    """

    #: "sotw" or "delta", for the debug view and metrics.
    kind: str
    __slots__ = ("_nonce", "_observer", "_shared", "_types", "node")

    def __init__(self, observer: Observer | None = None, shared: Shared | None = None) -> None:
        self.node: Node | None = None
        self._observer = observer or NullObserver()
        self._shared = shared or Shared()
        self._types: dict[str, StateT] = {}
        self._nonce = 0

    # Requests ------------------------------------------------------------------

    def receive(self, request: RequestT) -> bool:
        """Apply one request; False when there is nothing to reconsider (no type, or what
        the protocol ignores)."""
        if self.node is None and request.node is not None:
            self.node = request.node  # rule 2: only the first request must carry it
        type_url = request.type_url
        if not type_url:
            return False
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._types[type_url] = self._new_state()
        return self._apply(request, type_url, state, first)

    @abc.abstractmethod
    def _new_state(self) -> StateT: ...

    @abc.abstractmethod
    def _apply(self, request: RequestT, type_url: str, state: StateT, first: bool) -> bool:
        """The protocol's handling of a request for `type_url` (`first`: the type's first)."""

    def _settle(self, type_url: str, state: StateT, nonce: str, error_detail: Status | None) -> bool | None:
        """Apply what a request with `nonce` says of the type's responses (rules 3 and 12):
        True for the ACK of the latest one, False for its NACK or when none awaited an
        answer, None when the nonce is stale (a newer response went out since)."""
        if nonce != state.sent.nonce:
            self._observer.on_stale(type_url)
            return None
        error = error_message(error_detail)
        now = self._shared.clock()
        return state.sent.settle(nonce, error, self.node, type_url, self._observer, now=now) is True

    # Responses -----------------------------------------------------------------

    def responses(self, snapshot: Snapshot) -> list[Outgoing]:
        """Everything to send now for `snapshot`, in make-before-break order (rule 18).

        A type with a response awaiting its ACK gets nothing new (rule 21: one outstanding
        push per type; the newest content goes out after the ACK). Removals wait until
        every update is ACKed, so nothing is removed before its replacement is in place.
        """
        out: list[Outgoing] = []
        unsettled = False
        now = self._shared.clock()
        order = sorted(self._types, key=resource_types.push_rank)
        for type_url in order:
            state = self._types[type_url]
            version = snapshot.version(type_url)
            if state.sent.outstanding:
                # Rule 22: new content seen while a response awaits its ACK is due from now.
                if state.seen != version and state.due is None:
                    state.due = now
                unsettled = True
            elif state.quiet != version or state.force:
                if state.due is None:
                    state.due = now
                outgoing = self._update(type_url, state, snapshot)
                if outgoing is not None:
                    out.append(outgoing)
                    unsettled = True
            state.seen = version
        for type_url in order:
            state = self._types[type_url]
            if state.sent.outstanding:
                continue
            version = snapshot.version(type_url)
            if not unsettled and state.quiet != version:
                outgoing = self._remove(type_url, state, snapshot)
                if outgoing is not None:
                    out.append(outgoing)
            if state.quiet == version and not state.force:
                state.due = None  # nothing was left to send
        for outgoing in out:
            self._observer.on_response(outgoing)
        return out

    @abc.abstractmethod
    def _update(self, type_url: str, state: StateT, snapshot: Snapshot) -> Outgoing | None:
        """The response that brings one type's new or changed resources, if any."""

    @abc.abstractmethod
    def _remove(self, type_url: str, state: StateT, snapshot: Snapshot) -> Outgoing | None:
        """The response that removes what one type's client holds and should no longer,
        once every update is ACKed; it sets `state.quiet` when nothing is left."""

    def _warm_endpoints(self, clusters: Iterable[Resource]) -> None:
        """Rule 19: an updated EDS cluster warms only after its endpoints arrive again, so
        they are sent even if unchanged."""
        endpoints = self._types.get(resource_types.ENDPOINT)
        if endpoints is None:
            return
        for cluster in clusters:
            if cluster.endpoints:
                endpoints.force = {*endpoints.force, cluster.endpoints}

    def _send(
        self,
        type_url: str,
        state: StateT,
        snapshot: Snapshot,
        *,
        version: str,
        frame: Callable[[str], bytes],
        names: tuple[str, ...],
        removed: tuple[str, ...] = (),
    ) -> Outgoing:
        """A response framed by `frame` with the stream's next nonce (rules 1 and 12),
        recorded as the type's outstanding one."""
        self._nonce += 1
        nonce = str(self._nonce)
        outgoing = Outgoing(type_url, nonce, version, frame(nonce), names, removed)
        since = state.due if state.due is not None else self._shared.clock()
        state.due = None
        state.sent.record(outgoing, since, self._shared.sent_names)
        return outgoing

    # Introspection -------------------------------------------------------------

    def holds_current(self, type_url: str, snapshot: Snapshot) -> bool:
        """Whether the client has ACKed the snapshot's content of every name it subscribed
        to (vacuously true for a type it never asked for)."""
        state = self._types.get(type_url)
        if state is None:
            return True
        if state.sent.outstanding or state.sent.acked_version != state.sent.version:
            return False
        current = snapshot.resources(type_url)
        names = current.keys() if state.wildcard else state.names
        return all(state.holds(name, current[name]) for name in names if name in current)

    def status(self) -> dict[str, object]:
        """Per type: subscription and send/ACK/NACK state (for /debug/proxies)."""
        return {
            resource_types.short_name(type_url): {
                "wildcard": state.wildcard,
                "names": sorted(state.names),
                **state.details(),
                **state.sent.status(),
            }
            for type_url, state in sorted(
                self._types.items(), key=lambda item: resource_types.push_rank(item[0])
            )
        }
