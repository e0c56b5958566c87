"""The grpclib adapter: ADS streams in, framed responses out.

One handler coroutine per stream reads requests and sends what they made due; a
snapshot change sends from a short-lived task per stream (see `_Pusher`). Everything protocol-specific
lives in `sotw` and `delta`, so this module only moves bytes and keeps lifetimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError, StreamTerminatedError

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from meshcp.cache import resource_types
from meshcp.cache.snapshot import Snapshot
from meshcp.cache.snapshot_cache import SnapshotCache
from meshcp.telemetry.metrics import Metrics
from meshcp.telemetry.readiness import Readiness
from meshcp.xds.auth import (
    Authorizer,
    Classifier,
    SecretGuard,
    StreamRejected,
    allow_any,
    any_secret,
    by_node_id,
)
from meshcp.xds.delta import DeltaProtocol
from meshcp.xds.observe import MetricsObserver
from meshcp.xds.registry import ConnectedProxies, Connection, StreamState
from meshcp.xds.send_budget import DEFAULT_SEND_BUDGET, SendBudget
from meshcp.xds.sotw import SotwProtocol
from meshcp.xds.stream import Outgoing, Shared

log = logging.getLogger("meshcp.xds")

SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
SOTW_PATH = SERVICE + "StreamAggregatedResources"
DELTA_PATH = SERVICE + "DeltaAggregatedResources"
#: The largest request a stream may send (gRPC's default receive limit). grpclib has none:
#: it would buffer whatever a length prefix announces, up to 4 GiB per stream.
MAX_REQUEST_BYTES = 4 << 20
#: The status a stream of an aged-out connection ends with: the client is to retry, as it
#: would when a connection goes away (it has lost nothing and keeps its configuration).
AGED_OUT = (grpclib.const.Status.UNAVAILABLE, "the connection reached its maximum age; reconnect")


class _Protocol(StreamState, Protocol):
    def receive(self, request: Any) -> bool: ...

    def responses(self, snapshot: Snapshot) -> list[Outgoing]: ...


class _Pusher:
    """One stream's sending side: follows its class's snapshots and sends what its
    protocol says is due.

    There is no writer task per stream: after a request, the stream's handler computes
    and sends the responses itself; after a snapshot change, a short-lived task does,
    and ends when nothing is left: with many idle streams, a task, its frame and an Event
    each would be a large share of a stream's memory. Only one of them sends at a time
    (`_sending`); a wake-up during a send marks the stream `_dirty` and the sender looks
    again before it stops.

    `drain` ends the stream once nothing is being sent, and nothing more is sent after it.
    """

    __slots__ = (
        "_admission",
        "_budget",
        "_cancel",
        "_dirty",
        "_draining",
        "_on_send_error",
        "_protocol",
        "_readiness",
        "_sending",
        "_stream",
        "_task",
        "admitted",
        "key",
        "snapshot",
    )

    def __init__(
        self,
        stream: grpclib.server.Stream[Any, Any],
        protocol: _Protocol,
        readiness: Readiness,
        *,
        admission: asyncio.Semaphore,
        budget: SendBudget,
        on_send_error: Callable[[BaseException], None] = lambda error: None,
    ) -> None:
        self._stream = stream
        self._budget = budget
        self._on_send_error = on_send_error
        self._protocol = protocol
        self._readiness = readiness
        self._admission = admission
        self._cancel: Callable[[], None] = _nothing
        self._task: asyncio.Task[None] | None = None
        self._sending = self._dirty = self.admitted = False
        self._draining: Callable[[], None] | None = None
        self.key = ""
        self.snapshot: Snapshot | None = None

    def bind(self, cache: SnapshotCache, key: str) -> None:
        """Follow the snapshots of class `key` (a proxy's class can change, e.g. when its
        pod joins a service)."""
        self._cancel()
        self.key = key
        self.snapshot = cache.get(key)
        self._cancel = cache.watch(key, self)
        self.wake()

    def close(self) -> None:
        self._cancel()
        self._cancel = _nothing
        if self._task is not None:
            self._task.cancel()

    def __call__(self, snapshot: Snapshot, changed: frozenset[str]) -> None:
        self.snapshot = snapshot
        self.wake()

    def drain(self, end: Callable[[], None]) -> None:
        """Send nothing more, and call `end` once the response being sent, if any, is."""
        if self._draining is None:
            self._draining = end
            if not self._sending:
                self._end()

    def _end(self) -> None:
        """Call the `drain` callback, once (`_draining` stays set: nothing is sent after)."""
        end, self._draining = self._draining, _nothing
        if end is not None:
            end()

    @property
    def stream(self) -> grpclib.server.Stream[Any, Any]:
        return self._stream

    def wake(self) -> None:
        """Send what is due from a task of its own (for callers that cannot wait)."""
        if self._sending:
            self._dirty = True
        elif self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._push())

    async def after_request(self) -> None:
        """Send what a request made due, in the caller's task once the stream is admitted;
        until then the first push waits in a task of its own, and the handler keeps reading."""
        if self.admitted:
            await self.flush()
        else:
            self.wake()

    async def _push(self) -> None:
        try:
            await self.flush()
        except (StreamTerminatedError, ConnectionError):
            pass
        except Exception:
            log.exception("ADS push failed; resetting the stream")
            with contextlib.suppress(Exception):
                await self._stream.cancel()
        finally:
            self._task = None

    async def flush(self) -> None:
        """Send everything due, looking again while wake-ups arrive during the sends."""
        if self._sending:
            self._dirty = True
            return
        if self._draining is not None:
            return
        self._sending = True
        try:
            if not self.admitted:
                await self._readiness.wait()
                if self.snapshot is None:
                    return  # admitted with its first content; a new snapshot wakes it
                async with self._admission:  # rule 20: bound streams being served their first config
                    await self._send_due()
                self.admitted = True
            else:
                await self._send_due()
        finally:
            self._sending = False
            if self._draining is not None:
                self._end()

    async def _send_due(self) -> None:
        self._dirty = True
        while self._dirty and self._draining is None:
            self._dirty = False
            snapshot = self.snapshot
            if snapshot is None:
                return
            await self._budget.room()  # frame nothing while too much is being written
            due: list[Outgoing] = []
            try:
                due = self._protocol.responses(snapshot)
            finally:
                size = sum(len(outgoing.payload) for outgoing in due)
                self._budget.hold(size)
            try:
                for outgoing in due:
                    if self._draining is not None:
                        break  # the next responses go to the stream the proxy opens next
                    try:
                        await self._stream.send_message(outgoing.payload)
                    except Exception as error:
                        self._on_send_error(error)
                        raise
                    size -= len(outgoing.payload)
                    self._budget.release(len(outgoing.payload))
            finally:
                self._budget.release(size)


def _nothing() -> None:
    pass


def _end_aged_out(h2_stream: Any) -> None:
    """End a stream's handler with `AGED_OUT`: grpclib cancels the handler and sends the
    error as the stream's trailers, as it does for a deadline."""
    if h2_stream.wrapper is not None:
        h2_stream.wrapper.cancel(GRPCError(*AGED_OUT))


class AggregatedDiscoveryService:
    """Serves StreamAggregatedResources and DeltaAggregatedResources from a SnapshotCache.

    `admission` bounds how many new streams are being served their initial
    configuration at once (rule 20: reconnect storms); `send_budget` bounds the response
    bytes being written at once over all streams (`xds.send_budget`).
    """

    def __init__(
        self,
        cache: SnapshotCache,
        readiness: Readiness,
        metrics: Metrics,
        proxies: ConnectedProxies,
        *,
        classify: Classifier = by_node_id,
        authorize: Authorizer = allow_any,
        guard: SecretGuard = any_secret,
        admission: int = 256,
        send_budget: int = DEFAULT_SEND_BUDGET,
    ) -> None:
        self._cache = cache
        self._readiness = readiness
        self._metrics = metrics
        self._proxies = proxies
        self._classify = classify
        self._authorize = authorize
        self._guard = guard
        self._admission = asyncio.Semaphore(admission)
        self.send_budget = SendBudget(send_budget)
        self._observer = MetricsObserver(metrics)
        self._shared = Shared()
        self._open: dict[int, tuple[_Pusher, Connection]] = {}

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        stream = grpclib.const.Cardinality.STREAM_STREAM
        return {
            SOTW_PATH: grpclib.const.Handler(self._sotw, stream, DiscoveryRequest, DiscoveryResponse),
            DELTA_PATH: grpclib.const.Handler(
                self._delta, stream, DeltaDiscoveryRequest, DeltaDiscoveryResponse
            ),
        }

    def reclassify(self) -> int:
        """Re-run the classifier for every open stream; move those whose class changed.

        Called after each compile: a pod that joined a service, or a proxy that connected
        before its pod was known, starts receiving its class's configuration."""
        moved = 0
        for pusher, connection in list(self._open.values()):
            node = connection.protocol.node
            key = self._classify(node, connection.identity) if node is not None else pusher.key
            if key != pusher.key:
                pusher.bind(self._cache, key)
                connection.key = key
                moved += 1
        return moved

    def end_streams(self, connection: object) -> int:
        """End the streams of an HTTP/2 connection told to go away (it reached its maximum
        age): each once its in-flight response is sent, with `AGED_OUT`, which the proxy
        answers by opening a stream on a new connection. Returns how many."""
        ended = 0
        for pusher, _ in list(self._open.values()):
            h2_stream = pusher.stream._stream
            if h2_stream.connection is connection:
                pusher.drain(partial(_end_aged_out, h2_stream))
                ended += 1
        return ended

    async def _sotw(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self._serve(stream, SotwProtocol(self._observer, self._shared))

    async def _delta(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await self._serve(stream, DeltaProtocol(self._observer, self._shared))

    async def _serve(self, stream: grpclib.server.Stream[Any, Any], protocol: _Protocol) -> None:
        first = await self._receive(stream)
        if first is None:
            return
        node = first.node
        if node is None or not node.id:
            self._metrics.rejected_streams.labels("no_node").inc()
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "the first request must carry node.id")
        try:
            identity = self._authorize(node, _peer_certificate(stream))
        except StreamRejected as rejected:
            self._metrics.rejected_streams.labels(rejected.reason).inc()
            log.warning("refused ADS stream of %s from %s: %s", node.id, _peer(stream), rejected)
            raise GRPCError(grpclib.const.Status.PERMISSION_DENIED, str(rejected)) from None
        self._check_secrets(first, identity, node)
        protocol.receive(first)
        del first  # requests are not kept: the protocol took what it needs
        pusher = _Pusher(
            stream,
            protocol,
            self._readiness,
            admission=self._admission,
            budget=self.send_budget,
            on_send_error=self._send_failed,
        )
        pusher.bind(self._cache, self._classify(node, identity))
        connection = Connection(protocol, pusher.key, identity, _peer(stream), time.time())
        token = self._proxies.add(connection)
        self._open[token] = (pusher, connection)
        gauge = self._metrics.connected.labels(protocol.kind)
        gauge.inc()
        log.debug("%s stream opened by %s (class %s)", protocol.kind, node.id, pusher.key)
        try:
            while True:
                request = await self._receive(stream)
                if request is None:
                    break
                self._check_secrets(request, identity, node)
                changed = protocol.receive(request)
                del request  # not held while this stream waits for the next one
                if changed:
                    try:
                        await pusher.after_request()
                    except (StreamTerminatedError, ConnectionError):
                        break
        finally:
            pusher.close()
            self._open.pop(token, None)
            self._proxies.remove(token)
            gauge.dec()
            log.debug("%s stream of %s closed", protocol.kind, node.id)

    async def _receive(self, stream: grpclib.server.Stream[Any, Any]) -> Any:
        """The next request, or None when the client has gone. A request that is too large
        or does not decode ends the stream (counted as rejected, `oversized` or `malformed`)."""
        try:
            return await _receive(stream)
        except _Refused as refused:
            self._metrics.rejected_streams.labels(refused.reason).inc()
            log.debug("refused an ADS stream from %s: %s", _peer(stream), refused.error.message)
            raise refused.error from None

    def _send_failed(self, error: BaseException) -> None:
        """Count a response that could not be sent (the stream ends or resets after it)."""
        if isinstance(error, StreamTerminatedError):
            reason = "stream_closed"
        elif isinstance(error, ConnectionError):
            reason = "connection"
        else:
            reason = "other"
        self._metrics.send_errors.labels(reason).inc()

    def _check_secrets(self, request: Any, identity: str | None, node: Node) -> None:
        """Drop secret names this proxy may not ask for (not a name the mesh serves).

        Not what keeps another identity's key from a proxy: its class's snapshot holds
        only its own (see `Classifier`), so no name could reach one. Dropping keeps such
        names out of the stream's state and counts a proxy that asks for them."""
        if request.type_url != resource_types.SECRET:
            return
        field = "resource_names_subscribe" if isinstance(request, DeltaDiscoveryRequest) else "resource_names"
        names: list[str] = getattr(request, field)
        refused = [name for name in names if not self._guard(name)]
        if refused:
            setattr(request, field, [name for name in names if name not in refused])
            self._metrics.refused_secrets.inc(len(refused))
            log.warning(
                "refused secrets %s to %s (identity %s): not a name the mesh serves",
                ", ".join(refused),
                node.id,
                identity,
            )


class _Refused(Exception):
    """A request the stream is ended for: the gRPC error to answer, and the reason counted."""

    def __init__(self, reason: str, status: grpclib.const.Status, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.error = GRPCError(status, message)


async def _receive(stream: grpclib.server.Stream[Any, Any]) -> Any:
    """The next request, or None when the client has gone; raises `_Refused`."""
    try:
        return await _read_bounded(stream)
    except (StreamTerminatedError, ConnectionError):
        return None
    except (GRPCError, _Refused):
        raise
    except Exception as error:  # a request that does not decode
        status = grpclib.const.Status.INVALID_ARGUMENT
        raise _Refused("malformed", status, f"malformed request: {error}") from None


async def _read_bounded(stream: grpclib.server.Stream[Any, Any]) -> Any:
    """grpclib's `Stream.recv_message` with a size limit: the length prefix is checked
    before any of the message is read (grpclib's own reads, and acknowledges to the
    client, as many bytes as the prefix announces). Reaches into grpclib's stream, as
    `_peer_certificate` does, because grpclib offers no limit."""
    h2_stream = stream._stream
    prefix = await h2_stream.recv_data(5)
    if not prefix:
        return None
    if prefix[0]:
        status = grpclib.const.Status.INVALID_ARGUMENT
        raise _Refused("malformed", status, "malformed request: compressed messages are not accepted")
    size = int.from_bytes(prefix[1:5], "big")
    if size > MAX_REQUEST_BYTES:
        status = grpclib.const.Status.RESOURCE_EXHAUSTED
        raise _Refused("oversized", status, f"request of {size} bytes (at most {MAX_REQUEST_BYTES})")
    body = await h2_stream.recv_data(size)
    if len(body) != size:
        raise ValueError(f"the stream ended {size - len(body)} bytes into a message")
    request = stream._codec.decode(body, stream._recv_type)
    h2_stream.connection.messages_received += 1
    h2_stream.connection.last_message_received = time.monotonic()
    return request


def _peer_certificate(stream: grpclib.server.Stream[Any, Any]) -> bytes | None:
    """The client's DER certificate; grpclib's `Peer.cert()` only offers the decoded dict,
    which lacks what verification needs (the signature and the full extensions)."""
    transport = getattr(stream.peer, "_transport", None)
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    certificate: bytes | None = ssl_object.getpeercert(binary_form=True)
    return certificate


def _peer(stream: grpclib.server.Stream[Any, Any]) -> str:
    address = stream.peer.addr()
    return f"{address[0]}:{address[1]}" if address else "unknown"
