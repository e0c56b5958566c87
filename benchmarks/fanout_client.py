"""Simulated ADS clients: many Envoy-like streams multiplexed over a few HTTP/2 connections.

The load generator must cost far less than the server it measures, so it speaks HTTP/2
and protobuf directly instead of through grpclib and betterproto2: one asyncio protocol
per connection, no task per stream, requests framed from cached bytes, responses scanned
for the four fields an ADS client must echo (version, type URL, nonce, resource count).
Each stream behaves as Envoy does at start-up: CDS wildcard, then the EDS names of the
clusters, then LDS wildcard, then the RDS names of the listeners, ACKing every response
with its nonce (SotW: version and names too). `self_check` proves the framing against
betterproto2 and hpack, so the shortcuts cannot drift from the real encodings.
"""

from __future__ import annotations

import asyncio
import collections
import resource
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Generic, Protocol, TypeVar

import hpack

from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest, DiscoveryRequest
from meshcp.cache import resource_types
from meshcp.cache.wire import length_delimited, varint

SOTW_PATH = b"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_PATH = b"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
TYPES = (resource_types.CLUSTER, resource_types.ENDPOINT, resource_types.LISTENER, resource_types.ROUTE)
CDS, EDS, LDS, RDS = range(4)
ALL_TYPES = 0b1111
_TYPE_INDEX = {url.encode(): index for index, url in enumerate(TYPES)}

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


# Protobuf: DiscoveryRequest and DeltaDiscoveryRequest (envoy/service/discovery/v3).


def node_field(number: int, node_id: str, cluster: str) -> bytes:
    """A Node as Envoy fills it (id, cluster, user agent), as field `number` of a request."""
    node = (
        length_delimited(1, node_id.encode())
        + length_delimited(2, cluster.encode())
        + length_delimited(6, b"envoy")
        + length_delimited(7, b"1.40.0")
    )
    return length_delimited(number, node)


def names_field(number: int, names: Sequence[str]) -> bytes:
    return b"".join(length_delimited(number, name.encode()) for name in names)


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


@dataclass(frozen=True)
class Scanned:
    version: bytes
    type_url: bytes
    nonce: bytes
    resources: int
    removed: int


def scan(data: bytes, pos: int, end: int, delta: bool) -> Scanned:
    """The fields of a (Delta)DiscoveryResponse an ADS client acts on, without decoding resources."""
    version = type_url = nonce = b""
    resources = removed = 0
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag & 0x80:
            tag, pos = _varint_rest(data, pos, tag)
        wire = tag & 7
        if wire == 2:
            length = data[pos]
            pos += 1
            if length & 0x80:
                length, pos = _varint_rest(data, pos, length)
            number = tag >> 3
            if number == 2:
                resources += 1
            elif number == 1:
                version = data[pos : pos + length]
            elif number == 4:
                type_url = data[pos : pos + length]
            elif number == 5:
                nonce = data[pos : pos + length]
            elif number == 6 and delta:
                removed += 1
            pos += length
        elif wire == 0:
            while data[pos] & 0x80:
                pos += 1
            pos += 1
        else:
            raise ValueError(f"unexpected wire type {wire} in a discovery response")
    return Scanned(version, type_url, nonce, resources, removed)


def _varint_rest(data: bytes, pos: int, first: int) -> tuple[int, int]:
    value, shift = first & 0x7F, 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


@dataclass(frozen=True)
class Plan:
    """What every simulated proxy subscribes to; the same for all of them."""

    delta: bool
    endpoint_names: tuple[str, ...]
    route_names: tuple[str, ...]
    expected: tuple[int, int, int, int]  # resources per type in the initial config


class Requests:
    """Pre-framed request pieces; per message only the nonce and version are new bytes."""

    def __init__(self, plan: Plan) -> None:
        self.delta = plan.delta
        type_number = 2 if plan.delta else 4
        self.type_fields = [length_delimited(type_number, url.encode()) for url in TYPES]
        names_number = 3
        self.names = [
            b"",
            names_field(names_number, plan.endpoint_names),
            b"",
            names_field(names_number, plan.route_names),
        ]

    def first(self, node_id: str, cluster: str) -> bytes:
        """The stream's first request: CDS (legacy wildcard), carrying the node."""
        return node_field(1 if self.delta else 2, node_id, cluster) + self.type_fields[CDS]

    def subscribe(self, kind: int) -> bytes:
        return self.type_fields[kind] + self.names[kind]

    def ack(self, kind: int, version: bytes, nonce: bytes) -> bytes:
        if self.delta:
            return self.type_fields[kind] + b"\x32" + varint(len(nonce)) + nonce  # field 6
        return (
            b"\x0a"  # field 1, version_info
            + varint(len(version))
            + version
            + self.names[kind]
            + self.type_fields[kind]
            + b"\x2a"  # field 5, response_nonce
            + varint(len(nonce))
            + nonce
        )


class Proxy:
    """One simulated Envoy: one ADS stream."""

    __slots__ = (
        "acked",
        "change_at",
        "changes",
        "counts",
        "error",
        "index",
        "node_cluster",
        "ready_at",
        "rx",
        "stream_id",
        "window",
    )

    def __init__(self, index: int, node_cluster: str) -> None:
        self.index = index
        self.node_cluster = node_cluster
        self.stream_id = 0
        self.window = 0
        self.rx = b""
        self.acked = 0
        self.counts = [0, 0, 0, 0]
        self.ready_at = 0.0
        self.changes = 0
        self.change_at = 0.0
        self.error = ""


@dataclass
class Tracker:
    """Progress of every proxy of one load process."""

    pending: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: list[str] = field(default_factory=list)
    armed: bool = False

    def on_ready(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.ready.set()

    def on_failed(self, message: str) -> None:
        self.failed.append(message)
        self.on_ready()


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


class AdsConnection(H2Connection[Proxy]):
    """Fan-out proxies: the four types in order, then timed EDS changes."""

    def __init__(
        self, proxies: list[Proxy], plan: Plan, requests: Requests, authority: bytes, tracker: Tracker
    ) -> None:
        super().__init__(proxies, DELTA_PATH if plan.delta else SOTW_PATH, authority, tracker)
        self._plan = plan
        self._requests = requests
        self._tracker = tracker

    def _first_request(self, proxy: Proxy) -> bytes:
        return self._requests.first(f"proxy-{proxy.index}", proxy.node_cluster)

    def _ready(self, proxy: Proxy) -> bool:
        return proxy.acked == ALL_TYPES

    def _on_message(self, proxy: Proxy, data: bytes, start: int, end: int, now: float) -> None:
        self._on_response(proxy, scan(data, start, end, self._plan.delta), now)

    def _on_response(self, proxy: Proxy, response: Scanned, now: float) -> None:
        kind = _TYPE_INDEX.get(response.type_url)
        if kind is None:
            proxy.error = f"unexpected type {response.type_url!r}"
            return
        requests = self._requests
        self._send(proxy, requests.ack(kind, response.version, response.nonce))
        bit = 1 << kind
        if not proxy.acked & bit:
            proxy.acked |= bit
            proxy.counts[kind] = response.resources
            if kind != RDS:
                self._send(proxy, requests.subscribe(kind + 1))
            elif proxy.acked == ALL_TYPES:
                proxy.ready_at = now
                if tuple(proxy.counts) != self._plan.expected:
                    proxy.error = f"initial resources {proxy.counts}, expected {list(self._plan.expected)}"
                    self._tracker.failed.append(proxy.error)
                self._tracker.on_ready()
        elif self._tracker.armed and kind == EDS:
            proxy.changes += 1
            proxy.change_at = now
            if response.resources != 1:
                self._tracker.failed.append(f"change carried {response.resources} resources")


# The load process ------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    first: int  # global index of this process's first proxy
    count: int
    classes: int
    streams_per_connection: int
    plan: Plan


def _factory(
    group: list[Proxy], plan: Plan, requests: Requests, authority: bytes, tracker: Tracker
) -> Callable[[], AdsConnection]:
    return lambda: AdsConnection(group, plan, requests, authority, tracker)


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(control: Connection, spec: LoadSpec) -> None:
    """Entry point of a load process: serve the orchestrator's commands until "stop"."""
    raise_file_limit()
    asyncio.run(_main(control, spec))


async def _main(control: Connection, spec: LoadSpec) -> None:
    # Built inside the running loop: grpclib binds its server to the loop current at construction.
    await _LoadProcess(control, spec).main()


class ControlledLoad:
    """A load process's life: commands from the parent over a pipe (each handler may be
    a coroutine), until "stop" closes every connection and reports the CPU it used."""

    def __init__(self, control: Connection) -> None:
        self._control = control
        self._connections: list[H2Connection[Any]] = []
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        raise NotImplementedError

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._control.fileno(), self._on_command)
        self._control.send({"hello": True})
        await self._stop.wait()
        loop.remove_reader(self._control.fileno())
        for connection in self._connections:
            connection.close()
        for connection in self._connections:
            await connection.closed.wait()
        self._control.send({"stopped": True, "cpu": time.process_time()})

    def _on_command(self) -> None:
        command, *args = self._control.recv()
        result = {**self.handlers(), "stop": self._stop.set}[command](*args)
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class _LoadProcess(ControlledLoad):
    def __init__(self, control: Connection, spec: LoadSpec) -> None:
        super().__init__(control)
        self._spec = spec
        self._proxies = [
            Proxy(i, f"class-{i % spec.classes}") for i in range(spec.first, spec.first + spec.count)
        ]
        self._tracker = Tracker(pending=spec.count)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"connect": self._connect, "arm": self._arm, "report": self._report}

    async def _connect(self) -> None:
        spec = self._spec
        loop = asyncio.get_running_loop()
        requests = Requests(spec.plan)
        authority = f"{spec.host}:{spec.port}".encode()
        per = spec.streams_per_connection
        cpu = time.process_time()
        for offset in range(0, len(self._proxies), per):
            group = self._proxies[offset : offset + per]
            _, connection = await loop.create_connection(
                _factory(group, spec.plan, requests, authority, self._tracker), spec.host, spec.port
            )
            self._connections.append(connection)
        for opened in self._connections:
            await opened.settings_seen.wait()
            if opened.error:
                raise RuntimeError(opened.error)
            opened.open_streams()
        await self._tracker.ready.wait()
        ready = [p.ready_at for p in self._proxies if p.ready_at]
        self._control.send(
            {
                "ready_first": min(ready, default=0.0),
                "ready_last": max(ready, default=0.0),
                "ready": len(ready),
                "failed": self._tracker.failed[:5],
                "failures": len(self._tracker.failed),
                "cpu": time.process_time() - cpu,
            }
        )

    def _arm(self) -> None:
        for proxy in self._proxies:
            proxy.changes = 0
            proxy.change_at = 0.0
        self._tracker.armed = True
        self._control.send({"armed": True, "cpu": time.process_time()})

    def _report(self) -> None:
        times = [p.change_at for p in self._proxies if p.changes]
        self._control.send(
            {
                "times": times,
                "exactly_once": sum(1 for p in self._proxies if p.changes == 1),
                "failed": self._tracker.failed[:5],
                "failures": len(self._tracker.failed),
                "cpu": time.process_time(),
            }
        )


def self_check() -> None:
    """Prove the hand framing against betterproto2 (requests) and hpack (headers)."""
    plan = Plan(False, ("a|1", "b|2"), ("r",), (1, 2, 1, 1))
    sotw = Requests(plan)
    request = DiscoveryRequest.parse(sotw.first("p-1", "class-0"))
    assert request.node is not None and request.node.id == "p-1" and request.node.cluster == "class-0"
    assert request.type_url == resource_types.CLUSTER and not request.resource_names
    ack = DiscoveryRequest.parse(sotw.ack(EDS, b"v1", b"7"))
    assert (ack.version_info, ack.response_nonce, ack.type_url) == ("v1", "7", resource_types.ENDPOINT)
    assert list(ack.resource_names) == ["a|1", "b|2"] and ack.node is None
    delta = Requests(Plan(True, ("a|1",), ("r",), (1, 1, 1, 1)))
    first = DeltaDiscoveryRequest.parse(delta.first("p-2", "class-1"))
    assert first.node is not None and first.node.id == "p-2" and first.type_url == resource_types.CLUSTER
    sub = DeltaDiscoveryRequest.parse(delta.subscribe(RDS))
    assert list(sub.resource_names_subscribe) == ["r"] and sub.type_url == resource_types.ROUTE
    dack = DeltaDiscoveryRequest.parse(delta.ack(LDS, b"", b"12"))
    assert dack.response_nonce == "12" and dack.type_url == resource_types.LISTENER
    decoded = [(str(k), str(v)) for k, v in hpack.Decoder().decode(header_block(SOTW_PATH, b"127.0.0.1:1"))]
    assert decoded == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", SOTW_PATH.decode()),
        (":authority", "127.0.0.1:1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ], decoded
