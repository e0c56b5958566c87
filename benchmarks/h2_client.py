"""The HTTP/2 client side of the simulated proxies: many gRPC streams on one connection.

Written for the load processes, which must cost far less than the server they measure:
one asyncio protocol per connection, no task per stream, frames cut and parsed by hand
(RFC 9113), headers encoded once per connection as HPACK literals that never touch the
dynamic table, flow control with windows opened wide. `H2Connection` carries the streams;
what a proxy asks and does with an answer is its subclass's (the fan-out and the mesh
clients). `fanout_client.self_check` proves the header block against hpack.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import time
from typing import Generic, Protocol, TypeVar

import hpack

# HTTP/2 (RFC 9113)
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# frame types
_DATA, _HEADERS, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x3, 0x4
_PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x6, 0x7, 0x8, 0x9
# flags
_END_STREAM = _ACK = 0x1
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
# settings
_ENABLE_PUSH, _MAX_CONCURRENT_STREAMS, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = 0x2, 0x3, 0x4, 0x5
_MAX_WINDOW = 2**31 - 1
_REFILL = 2**30
_FRAME_HEADER = struct.Struct(">HBBBI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME_HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def _hpack_string(value: bytes) -> bytes:
    """An HPACK string literal without Huffman coding."""
    if len(value) < 127:
        return bytes((len(value),)) + value
    rest, out = len(value) - 127, bytearray((127,))
    while rest >= 128:
        out.append(rest & 0x7F | 0x80)
        rest >>= 7
    out.append(rest)
    return bytes(out) + value


def _literal(name_index: int, value: bytes) -> bytes:
    """A header "literal without indexing" with a static-table name: it never touches the
    dynamic table, so one encoded block is valid for every stream of a connection."""
    prefix = bytes((name_index,)) if name_index < 15 else bytes((15, name_index - 15))
    return prefix + _hpack_string(value)


def header_block(path: bytes, authority: bytes) -> bytes:
    return (
        b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
        + _literal(4, path)
        + _literal(1, authority)
        + _literal(31, b"application/grpc")
        + b"\x00"
        + _hpack_string(b"te")
        + _hpack_string(b"trailers")
    )


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class StreamOwner(Protocol):
    """What the HTTP/2 transport needs of a simulated proxy: its stream and its buffers."""

    stream_id: int
    window: int
    rx: bytes
    error: str


class Failures(Protocol):
    failed: list[str]

    def on_failed(self, message: str) -> None: ...


P = TypeVar("P", bound=StreamOwner)


class H2Connection(asyncio.Protocol, Generic[P]):
    """One HTTP/2 connection carrying the ADS streams of many proxies: framing, HPACK,
    flow control and failures. What a proxy asks and does with an answer is the
    subclass's (`_first_request`, `_on_message`, `_ready`); the fan-out and mesh scale
    load processes share this part."""

    def __init__(self, proxies: list[P], path: bytes, authority: bytes, failures: Failures) -> None:
        self._proxies = proxies
        self._failures = failures
        self._headers = header_block(path, authority)
        self._streams: dict[int, P] = {}
        self._transport: asyncio.Transport | None = None
        self._pending = b""
        self._queue: collections.deque[tuple[P, bytes]] = collections.deque()
        self._send_window = 65_535
        self._stream_window = 65_535
        self._max_frame = 16_384
        self._max_streams = 100
        self._received = 0
        self._header_block = b""
        self._header_stream = 0
        self._header_end_stream = False
        self._decoder = hpack.Decoder()
        self.settings_seen = asyncio.Event()
        self.closed = asyncio.Event()
        self.error = ""

    # What the subclass decides ----------------------------------------------------

    def _first_request(self, proxy: P) -> bytes:
        raise NotImplementedError

    def _on_message(self, proxy: P, data: bytes, start: int, end: int, now: float) -> None:
        """One gRPC message (a response) of `proxy`'s stream: `data[start:end]`."""
        raise NotImplementedError

    def _ready(self, proxy: P) -> bool:
        """Whether `proxy` got its initial configuration (a later failure is not its failure)."""
        raise NotImplementedError

    def _on_bytes(self, count: int) -> None:
        """`count` bytes of DATA arrived."""

    def _send(self, proxy: P, message: bytes) -> None:
        self._queue.append((proxy, grpc_message(message)))

    # Connection lifetime --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        settings = b"".join(
            struct.pack(">HI", key, value)
            for key, value in (
                (_ENABLE_PUSH, 0),
                (_INITIAL_WINDOW_SIZE, _MAX_WINDOW),
                (_MAX_FRAME_SIZE, 2**24 - 1),
            )
        )
        transport.write(
            _PREFACE
            + frame(_SETTINGS, 0, 0, settings)
            + frame(_WINDOW_UPDATE, 0, 0, (_MAX_WINDOW - 65_535).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.error:
            self.error = f"connection lost: {exc}" if exc else "connection closed"
        for proxy in self._streams.values():
            if not self._ready(proxy) and not proxy.error:
                proxy.error = self.error
                self._failures.on_failed(self.error)
        self.closed.set()
        self.settings_seen.set()

    def open_streams(self) -> None:
        """Open every proxy's stream and send its first request (after the server's SETTINGS)."""
        if len(self._proxies) > self._max_streams:
            raise RuntimeError(f"server allows {self._max_streams} streams per connection")
        out: list[bytes] = []
        stream_id = 1
        for proxy in self._proxies:
            proxy.stream_id = stream_id
            proxy.window = self._stream_window
            self._streams[stream_id] = proxy
            out.append(frame(_HEADERS, _END_HEADERS, stream_id, self._headers))
            self._send(proxy, self._first_request(proxy))
            stream_id += 2
        self._flush(out)
        self._write(out)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # Receiving -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self._pending + data if self._pending else data
        size, pos = len(buf), 0
        out: list[bytes] = []
        unpack = _FRAME_HEADER.unpack_from
        while size - pos >= 9:
            high, low, kind, flags, stream_id = unpack(buf, pos)
            length = high << 8 | low
            start = pos + 9
            end = start + length
            if end > size:
                break
            pos = end
            stream_id &= 0x7FFFFFFF
            if kind == _DATA:
                self._on_data(buf, start, end, flags, stream_id, now)
            elif kind in (_HEADERS, _CONTINUATION):
                self._on_headers(buf[start:end], kind, flags, stream_id)
            elif kind == _WINDOW_UPDATE:
                increment = int.from_bytes(buf[start:end], "big") & 0x7FFFFFFF
                if stream_id == 0:
                    self._send_window += increment
                elif (proxy := self._streams.get(stream_id)) is not None:
                    proxy.window += increment
            elif kind == _SETTINGS:
                if not flags & _ACK:
                    self._on_settings(buf[start:end])
                    out.append(frame(_SETTINGS, _ACK, 0))
            elif kind == _PING:
                if not flags & _ACK:
                    out.append(frame(_PING, _ACK, 0, buf[start:end]))
            elif kind == _RST_STREAM:
                code = int.from_bytes(buf[start:end], "big")
                self._fail(stream_id, f"stream reset by the server (error code {code})")
            elif kind == _GOAWAY:
                code = int.from_bytes(buf[start + 4 : start + 8], "big")
                self.error = f"GOAWAY error code {code}: {buf[start + 8 : end]!r}"
        self._pending = buf[pos:]
        if self._received >= _REFILL:
            out.append(frame(_WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big")))
            self._received = 0
        self._flush(out)
        self._write(out)

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == _INITIAL_WINDOW_SIZE:
                delta, self._stream_window = value - self._stream_window, value
                for proxy in self._streams.values():
                    proxy.window += delta
            elif key == _MAX_FRAME_SIZE:
                self._max_frame = value
            elif key == _MAX_CONCURRENT_STREAMS:
                self._max_streams = value
        if self._max_streams >= len(self._proxies):
            self.settings_seen.set()

    def _on_headers(self, block: bytes, kind: int, flags: int, stream_id: int) -> None:
        if kind == _HEADERS:
            start, end = 0, len(block)
            if flags & _PADDED:
                start, end = 1, end - block[0]
            if flags & _PRIORITY:
                start += 5
            self._header_block, self._header_stream = block[start:end], stream_id
            self._header_end_stream = bool(flags & _END_STREAM)
        else:
            self._header_block += block
        if not flags & _END_HEADERS:
            return
        headers = {str(k): str(v) for k, v in self._decoder.decode(self._header_block, raw=False)}
        if self._header_end_stream:  # trailers (or a trailers-only error): the stream is over
            status, message = headers.get("grpc-status", "?"), headers.get("grpc-message", "")
            self._fail(self._header_stream, f"stream ended: grpc-status {status} {message}")

    def _fail(self, stream_id: int, message: str) -> None:
        proxy = self._streams.pop(stream_id, None)
        if proxy is None or proxy.error:
            return
        proxy.error = message
        if not self._ready(proxy):
            self._failures.on_failed(message)
        else:
            self._failures.failed.append(message)

    def _on_data(self, buf: bytes, start: int, end: int, flags: int, stream_id: int, now: float) -> None:
        self._received += end - start
        self._on_bytes(end - start)
        if flags & _PADDED:
            end -= buf[start]
            start += 1
        proxy = self._streams.get(stream_id)
        if proxy is None:
            return
        if proxy.rx:
            data, pos = proxy.rx + buf[start:end], 0
            end = len(data)
        else:
            data, pos = buf, start
        while end - pos >= 5:
            size = int.from_bytes(data[pos + 1 : pos + 5], "big")
            if end - pos - 5 < size:
                break
            self._on_message(proxy, data, pos + 5, pos + 5 + size, now)
            pos += 5 + size
        proxy.rx = data[pos:end] if pos < end else b""

    # Sending (HTTP/2 flow control) --------------------------------------------

    def _flush(self, out: list[bytes]) -> None:
        """Move queued messages into DATA frames as far as the server's windows allow."""
        queue = self._queue
        while queue:
            proxy, data = queue[0]
            if proxy.error:
                queue.popleft()
                continue
            size = min(len(data), self._send_window, proxy.window)
            if size <= 0:
                return
            chunk = data if size == len(data) else data[:size]
            for offset in range(0, size, self._max_frame):
                out.append(frame(_DATA, 0, proxy.stream_id, chunk[offset : offset + self._max_frame]))
            self._send_window -= size
            proxy.window -= size
            if size == len(data):
                queue.popleft()
            else:
                queue[0] = (proxy, data[size:])

    def _write(self, out: list[bytes]) -> None:
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))
