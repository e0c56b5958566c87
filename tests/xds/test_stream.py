"""What both protocols share (xds/stream.py): push latency runs from when a stream had
content due to the ACK of it (rule 22), on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from meshcp.cache import Snapshot
from meshcp.xds.delta import DeltaProtocol
from meshcp.xds.sotw import SotwProtocol
from meshcp.xds.stream import Nack, Outgoing, Shared
from tests.factories import CDS, World


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Latencies:
    """Records each ACK's push latency."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def on_ack(self, type_url: str, latency: float) -> None:
        self.seen.append((type_url, latency))

    def on_nack(self, node_id: str, type_url: str, nack: Nack) -> None:
        pass

    def on_stale(self, type_url: str) -> None:
        pass

    def on_response(self, outgoing: Outgoing) -> None:
        pass


class Proxy:
    """One CDS subscription over one of the protocols (the other stays unused), ACKing by hand."""

    def __init__(self, kind: str, clock: Clock) -> None:
        self.latencies = Latencies()
        shared = Shared(clock=clock)
        self.delta = kind == "delta"
        self.sotw = SotwProtocol(self.latencies, shared)
        self.incremental = DeltaProtocol(self.latencies, shared)
        self.nonce = ""
        self.version = ""

    def subscribe(self, snapshot: Snapshot) -> int:
        if self.delta:
            self.incremental.receive(
                DeltaDiscoveryRequest(node=Node(id="p"), type_url=CDS, resource_names_subscribe=["*"])
            )
        else:
            self.sotw.receive(DiscoveryRequest(node=Node(id="p"), type_url=CDS))
        return self.pump(snapshot)

    def pump(self, snapshot: Snapshot) -> int:
        out = (self.incremental if self.delta else self.sotw).responses(snapshot)
        for outgoing in out:
            if self.delta:
                self.nonce = DeltaDiscoveryResponse.parse(outgoing.payload).nonce
            else:
                response = DiscoveryResponse.parse(outgoing.payload)
                self.nonce, self.version = response.nonce, response.version_info
        return len(out)

    def ack(self, snapshot: Snapshot) -> int:
        if self.delta:
            self.incremental.receive(DeltaDiscoveryRequest(type_url=CDS, response_nonce=self.nonce))
        else:
            self.sotw.receive(
                DiscoveryRequest(type_url=CDS, response_nonce=self.nonce, version_info=self.version)
            )
        return self.pump(snapshot)


@pytest.fixture(params=["sotw", "delta"])
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def test_rule22_a_proxy_connecting_late_measures_from_its_request_not_from_the_snapshot(kind: str) -> None:
    clock = Clock()
    snapshot = Snapshot(World().resources(), created=0.0)
    clock.now = 44.0  # the proxy connects long after the content was built
    proxy = Proxy(kind, clock)
    assert proxy.subscribe(snapshot) == 1
    clock.now = 44.5
    proxy.ack(snapshot)
    assert proxy.latencies.seen == [(CDS, 0.5)]


def test_rule22_a_change_seen_while_awaiting_an_ack_is_due_from_when_the_stream_saw_it(kind: str) -> None:
    clock = Clock()
    world = World()
    first = Snapshot(world.resources(), created=0.0)
    proxy = Proxy(kind, clock)
    clock.now = 10.0
    proxy.subscribe(first)
    clock.now = 11.0
    world.clusters["c"] = 0
    second = Snapshot(world.resources(), created=5.0, previous=first)
    assert proxy.pump(second) == 0  # rule 21: one outstanding push per type
    clock.now = 12.0
    assert proxy.ack(second) == 1  # the newest content goes out after the ACK
    clock.now = 13.5
    proxy.ack(second)
    assert proxy.latencies.seen == [(CDS, 2.0), (CDS, 2.5)]


def test_rule22_a_quiet_stream_measures_a_later_change_from_when_it_came(kind: str) -> None:
    clock = Clock()
    world = World()
    first = Snapshot(world.resources(), created=0.0)
    proxy = Proxy(kind, clock)
    proxy.subscribe(first)
    clock.now = 1.0
    proxy.ack(first)
    clock.now = 50.0
    world.listeners["other"] = 10001  # a change of another type: nothing of CDS to send
    other = Snapshot(world.resources(), previous=first)
    assert proxy.pump(other) == 0
    clock.now = 100.0
    world.clusters["c"] = 0
    changed = Snapshot(world.resources(), previous=other)
    assert proxy.pump(changed) == 1
    clock.now = 100.25
    proxy.ack(changed)
    assert proxy.latencies.seen == [(CDS, 1.0), (CDS, 0.25)]
