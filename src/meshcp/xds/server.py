"""The xDS gRPC server: listening socket, TLS, HTTP/2 limits and shutdown."""

from __future__ import annotations

import asyncio
import random
import ssl
import weakref
from collections.abc import Callable
from typing import Any, cast

import grpclib.server
from grpclib.protocol import H2Protocol
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from meshcp.xds.codec import FramedCodec
from meshcp.xds.service import AggregatedDiscoveryService

#: h2 allows 100 concurrent streams per connection by default; an Envoy uses one ADS
#: stream per connection, but load generators and gRPC multiplexers use many.
MAX_CONCURRENT_STREAMS = 100_000
#: Seconds a new connection has to open its first stream before it is closed.
HANDSHAKE_TIMEOUT = 10.0
#: Why a connection was refused (the `refused` callback's argument): its bytes are not
#: HTTP/2, or it opened no stream within the handshake timeout.
PROTOCOL_ERROR, NO_STREAM = "protocol_error", "no_stream"
REFUSAL_REASONS = (PROTOCOL_ERROR, NO_STREAM)
#: A connection's maximum age varies by this share either way, so that the connections
#: made in one burst (a replica's restart, a reconnect storm) do not all age out at once.
MAX_AGE_JITTER = 0.1
#: Seconds an aged-out connection is kept after its GOAWAY, for its streams to end (their
#: in-flight responses complete first) and the client to close it; then it is closed.
MAX_AGE_GRACE = 30.0


class _Server(grpclib.server.Server):
    """grpclib's server with the HTTP/2 concurrent-stream limit raised, connections that
    open no stream closed after `handshake_timeout`, and connections closed on shutdown.

    grpclib exposes no setting for the limit, so it is announced right after the
    connection's initial SETTINGS frame. grpclib keeps a connection for ever however little
    it sent (half a preface, half a frame): each would hold a descriptor, so one that has
    not opened a stream after `handshake_timeout` seconds is closed. grpclib's `close`
    cancels handlers but leaves connections open, so clients would wait forever;
    `close_connections` sends GOAWAY and closes them, and the proxies reconnect (to
    another replica, or to us later). Each connection refused is told to `refused` with
    its reason (`REFUSAL_REASONS`).

    With a `max_age`, a connection that reaches it (± `MAX_AGE_JITTER`) is told to go
    away, as grpc-go's MaxConnectionAge does: without it a proxy stays on the replica it
    first reached for ever, and replicas added later (a scale-up, a restarted one) serve
    nobody. It gets a GOAWAY frame (so its client opens no new stream on it), then
    `age_out` is called with the connection to end its streams once their in-flight
    responses are sent; `MAX_AGE_GRACE` seconds later it is closed if its client has not
    closed it.
    """

    def __init__(
        self,
        *args: Any,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        refused: Callable[[str], None] = lambda reason: None,
        max_age: float = 0.0,
        age_out: Callable[[object], None] = lambda connection: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()
        self._handshake_timeout = handshake_timeout
        self._refused = refused
        self._max_age = max_age
        self._age_out = age_out

    def close_connections(self) -> None:
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is None or not hasattr(connection, "_transport"):
                continue
            connection._connection.close_connection()
            connection.flush()
            protocol.processor.close("server shutting down")

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        original = protocol.connection_made

        def connection_made(transport: Any) -> None:
            original(transport)
            h2_connection = protocol.connection._connection
            h2_connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS})
            protocol.connection.flush()
            feed = protocol.connection.feed
            refused: list[str] = []  # this connection's refusal, told once

            def refuse(reason: str) -> None:
                if not refused:
                    refused.append(reason)
                    self._refused(reason)

            def counted_feed(data: bytes) -> Any:
                try:
                    return feed(data)
                except ProtocolError:  # grpclib closes the connection
                    refuse(PROTOCOL_ERROR)
                    raise

            def close_if_silent() -> None:
                if protocol.connection.streams_started == 0 and not transport.is_closing():
                    transport.close()
                    refuse(NO_STREAM)

            protocol.connection.feed = counted_feed  # type: ignore[method-assign]
            loop = asyncio.get_running_loop()
            loop.call_later(self._handshake_timeout, close_if_silent)
            if self._max_age > 0:
                jitter = random.uniform(-MAX_AGE_JITTER, MAX_AGE_JITTER)
                # a weak reference: a closed connection is not kept until its age comes
                loop.call_later(self._max_age * (1 + jitter), self._go_away, weakref.ref(protocol))

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol

    def _go_away(self, reference: weakref.ref[H2Protocol]) -> None:
        """Tell a connection that reached its maximum age to go away, gracefully: a
        GOAWAY frame naming the last stream it opened (h2's `close_connection` would also
        forbid sending on the open streams, whose responses must complete), then its
        streams are ended by `age_out`, and it is closed after the grace period."""
        protocol = reference()
        connection = getattr(protocol, "connection", None)
        if protocol is None or connection is None or _closing(protocol):
            return
        h2_connection = connection._connection
        frame = GoAwayFrame(
            stream_id=0,
            last_stream_id=h2_connection.highest_inbound_stream_id,
            error_code=ErrorCodes.NO_ERROR,
            additional_data=b"max_age",
        )
        h2_connection._prepare_for_sending([frame])
        connection.flush()
        self._age_out(connection)
        asyncio.get_running_loop().call_later(MAX_AGE_GRACE, self._close_aged, reference)

    def _close_aged(self, reference: weakref.ref[H2Protocol]) -> None:
        protocol = reference()
        if protocol is None or _closing(protocol):
            return
        protocol.connection._connection.close_connection()
        protocol.connection.flush()
        protocol.processor.close("connection reached its maximum age")


def _closing(protocol: H2Protocol) -> bool:
    transport = getattr(protocol.connection, "_transport", None)
    return transport is None or bool(transport.is_closing())


class XdsServer:
    """Owns the gRPC listener of one AggregatedDiscoveryService."""

    def __init__(
        self,
        service: AggregatedDiscoveryService,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        refused: Callable[[str], None] = lambda reason: None,
        max_connection_age: float = 0.0,
        aged_out: Callable[[], None] = lambda: None,
    ) -> None:
        """`refused` is told of each connection refused, with its reason (`REFUSAL_REASONS`).
        A connection older than `max_connection_age` seconds (0: never), give or take
        `MAX_AGE_JITTER`, is told to go away and its streams are ended (the proxy
        reconnects, perhaps to another replica); `aged_out` is told of each."""

        def age_out(connection: object) -> None:
            aged_out()
            service.end_streams(connection)

        self._server = _Server(
            [service],
            codec=FramedCodec(),
            handshake_timeout=handshake_timeout,
            refused=refused,
            max_age=max_connection_age,
            age_out=age_out,
        )
        self._stopped = False
        self.port = 0

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Listen on host:port (port 0 picks a free one, then readable as `port`)."""
        await self._server.start(host, port, ssl=tls, reuse_address=True)
        listener = cast(asyncio.Server | None, self._server._server)
        sockets = listener.sockets if listener is not None else ()
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting streams, end the open ones, close connections; idempotent."""
        if self._stopped or self._server._server is None:
            return
        self._stopped = True
        self._server.close()
        self._server.close_connections()
        await self._server.wait_closed()
