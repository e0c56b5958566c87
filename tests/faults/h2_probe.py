"""A hostile ADS client: one HTTP/2 connection (the h2 library) on which a test sends gRPC
streams with whatever bytes it likes (malformed messages, lying length prefixes, messages
too large), and reads how the server ended each. A well-behaved client cannot send these:
grpclib and Envoy frame what they are given correctly."""

from __future__ import annotations

import asyncio
import contextlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions

#: Bytes per DATA frame (HTTP/2's default largest frame).
_CHUNK = 16_384


def grpc_frame(payload: bytes, *, length: int | None = None, compressed: bool = False) -> bytes:
    """A gRPC message: flag, length prefix (`length` to lie about it), payload."""
    size = len(payload) if length is None else length
    return bytes((1 if compressed else 0,)) + size.to_bytes(4, "big") + payload


class H2Probe:
    """One connection; `call` opens a stream, sends its DATA and returns how it ended:
    `grpc-status N` (from trailers), `reset N` (RST_STREAM) or `connection closed`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._ended: dict[int, asyncio.Future[str]] = {}
        self._window = asyncio.Event()
        self._h2.initiate_connection()
        self._flush()
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, host: str, port: int) -> H2Probe:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def call(self, path: str, data: bytes, *, end: bool = True) -> str:
        """Open a stream to `path`, send `data` (as flow control allows; stops if the
        server ends the stream first), end it if `end`; how the server ended it."""
        stream = self._h2.get_next_available_stream_id()
        ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._ended[stream] = ended
        self._h2.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "meshcp"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        self._flush()
        view = memoryview(data)
        while view and not ended.done():
            window = min(self._h2.local_flow_control_window(stream), _CHUNK)
            if window <= 0:
                self._window.clear()
                waiting = asyncio.ensure_future(self._window.wait())
                await asyncio.wait((waiting, ended), return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                continue
            try:
                self._h2.send_data(stream, view[:window].tobytes())
            except h2.exceptions.StreamClosedError:
                break
            view = view[window:]
            self._flush()
            await self._writer.drain()
        if end and not ended.done():
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._h2.end_stream(stream)
                self._flush()
        return await ended

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    def _end(self, stream: int, how: str) -> None:
        ended = self._ended.pop(stream, None)
        if ended is not None and not ended.done():
            ended.set_result(how)

    async def _read(self) -> None:
        try:
            while True:
                data = await self._reader.read(65_536)
                if not data:
                    break
                for event in self._h2.receive_data(data):
                    self._on(event)
                self._flush()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        for stream in list(self._ended):
            self._end(stream, "connection closed")

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            # header_encoding="utf-8" makes h2 hand out str, which its types do not say
            headers = {_text(name): _text(value) for name, value in event.headers or []}
            if "grpc-status" in headers and event.stream_id is not None:
                self._end(event.stream_id, f"grpc-status {headers['grpc-status']}")
        elif isinstance(event, h2.events.StreamReset) and event.stream_id is not None:
            self._end(event.stream_id, f"reset {event.error_code}")
        elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            for stream in list(self._ended):
                self._end(stream, "connection closed")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
