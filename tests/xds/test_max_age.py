"""The maximum connection age over real gRPC on loopback: a connection told to go away gets
an HTTP/2 GOAWAY, the response its stream is writing arrives whole (a client that reads
slowly holds it in flow control), and only then does the stream end, with UNAVAILABLE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpclib.client
import grpclib.const
import h2.config
import h2.connection
import h2.events
import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from meshcp.xds.service import AGED_OUT, SOTW_PATH
from tests.factories import CDS, World

STREAM = grpclib.const.Cardinality.STREAM_STREAM
MAX_AGE = 0.5
#: A cluster name this long makes the response far larger than the window.
LONG_NAME = 1 << 20


def metric(runtime: ControllerRuntime, name: str, labels: dict[str, str] | None = None) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def eventually(predicate: object, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    settings = Settings(
        xds_address=Address("127.0.0.1", 0),
        http_address=Address("127.0.0.1", 0),
        xds_max_connection_age=MAX_AGE,
    )
    runtime = await ControllerRuntime.open(settings)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


class RawClient:
    """An HTTP/2 client of one gRPC stream that acknowledges received data only when told,
    and finishes its stream after a GOAWAY as Envoy does (grpclib's client drops the
    connection at once)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.data = bytearray()
        self.unacked = 0
        self.trailers: dict[str, str] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.ended = False

    async def start(self, request: bytes, port: int) -> None:
        self.h2.initiate_connection()
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", SOTW_PATH),
            (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers"),
        ]  # fmt: skip
        self.h2.send_headers(1, headers)
        self.h2.send_data(1, b"\0" + len(request).to_bytes(4, "big") + request)
        await self.flush()

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    async def receive(self, *, acknowledge: bool) -> None:
        """Acknowledge the data read so far if told, then read what arrives next."""
        if acknowledge and self.unacked:
            self.h2.acknowledge_received_data(self.unacked, 1)
            self.unacked = 0
            await self.flush()
        chunk = await self.reader.read(1 << 16)
        if not chunk:
            self.ended = True
            return
        for event in self.h2.receive_data(chunk):
            if isinstance(event, h2.events.DataReceived):
                self.data += event.data
                self.unacked += event.flow_controlled_length
            elif isinstance(event, h2.events.TrailersReceived):
                self.trailers = dict(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                # h2 closes its whole connection at a GOAWAY; HTTP/2 (RFC 9113, 6.8) and
                # Envoy carry on with the streams up to its last stream id, as here.
                self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            elif isinstance(event, h2.events.StreamEnded):
                self.ended = True
        await self.flush()


async def test_the_response_in_flight_arrives_whole_then_the_stream_ends_unavailable(
    runtime: ControllerRuntime,
) -> None:
    world = World()
    world.clusters = {"a" * LONG_NAME: 0}
    runtime.cache.set_snapshot("n1", world.snapshot())
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.xds.port)
    client = RawClient(reader, writer)
    try:
        request = bytes(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
        await client.start(request, runtime.xds.port)
        # Nothing acknowledged: the response is stuck in flow control (64 KiB windows) when
        # the connection reaches its age.
        while metric(runtime, "meshcp_xds_aged_out_connections_total") < 1:
            await asyncio.wait_for(client.receive(acknowledge=False), 10)
        while client.goaway is None:
            await asyncio.wait_for(client.receive(acknowledge=False), 10)
        assert client.goaway.error_code == 0 and client.goaway.additional_data == b"max_age"
        assert client.goaway.last_stream_id == 1
        assert not client.ended and len(client.data) < LONG_NAME
        assert metric(runtime, "meshcp_xds_connected_proxies", {"stream": "sotw"}) == 1
        while not client.ended:
            await asyncio.wait_for(client.receive(acknowledge=True), 10)
    finally:
        writer.close()
    size = int.from_bytes(client.data[1:5], "big")
    assert len(client.data) == 5 + size, "one whole response, and nothing after it"
    response = DiscoveryResponse.parse(bytes(client.data[5:]))
    assert [item.unpack().name for item in response.resources] == ["a" * LONG_NAME]
    assert client.trailers["grpc-status"] == str(AGED_OUT[0].value)
    assert "maximum age" in client.trailers["grpc-message"]
    await eventually(lambda: metric(runtime, "meshcp_xds_connected_proxies", {"stream": "sotw"}) == 0)
    assert metric(runtime, "meshcp_xds_send_errors_total", {"reason": "stream_closed"}) == 0


async def test_a_client_that_reconnects_is_served_again(runtime: ControllerRuntime) -> None:
    """Once its connection aged out, the same channel dials again and is served again
    (grpclib's client ends its stream at the GOAWAY itself, without waiting for the
    server's UNAVAILABLE)."""
    runtime.cache.set_snapshot("n1", World().snapshot())
    channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
    try:
        for _ in range(2):
            async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
                await stream.send_message(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
                response = await stream.recv_message()
                assert response is not None and len(response.resources) == 2
                with pytest.raises((GRPCError, StreamTerminatedError)):
                    await stream.recv_message()
    finally:
        channel.close()
    assert metric(runtime, "meshcp_xds_aged_out_connections_total") == 2
