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

import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import hpack
from ads_wire import DELTA_PATH, SOTW_PATH, names_field, node_field
from control_pipe import run_child
from h2_client import H2Connection, header_block
from load_process import ControlledLoad, Tracker

from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest, DiscoveryRequest
from meshcp.cache import resource_types
from meshcp.cache.wire import length_delimited, read_varint, varint

TYPES = (resource_types.CLUSTER, resource_types.ENDPOINT, resource_types.LISTENER, resource_types.ROUTE)
CDS, EDS, LDS, RDS = range(4)
ALL_TYPES = 0b1111
_TYPE_INDEX = {url.encode(): index for index, url in enumerate(TYPES)}


# Responses: the fields of a (Delta)DiscoveryResponse a client echoes.


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
            tag, pos = read_varint(data, pos - 1)  # multi-byte: the shared reader
        wire = tag & 7
        if wire == 2:
            length = data[pos]
            pos += 1
            if length & 0x80:
                length, pos = read_varint(data, pos - 1)
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


def run(control: Connection, spec: LoadSpec) -> None:
    """Entry point of a load process: serve the orchestrator's commands until "stop"."""
    run_child(lambda: _LoadProcess(control, spec).main())


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
        requests = Requests(spec.plan)
        authority = f"{spec.host}:{spec.port}".encode()
        cpu = time.process_time()

        def connection(group: list[Proxy]) -> H2Connection[Proxy]:
            return AdsConnection(group, spec.plan, requests, authority, self._tracker)

        await self.open_connections(
            self._proxies, spec.streams_per_connection, spec.host, spec.port, connection
        )
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
