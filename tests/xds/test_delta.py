"""Incremental (delta) ADS rules (numbers as in docs/xds-protocol.md), driven as a client would."""

from __future__ import annotations

import pytest

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from meshcp._proto.google.rpc import Status
from meshcp.cache import Snapshot
from meshcp.xds.delta import DeltaProtocol
from meshcp.xds.stream import Shared
from tests.factories import CDS, EDS, LDS, RDS, World
from tests.xds.test_sotw import Recorder


class Client:
    #: Whether a new snapshot is built with the previous one as `previous`, as the publisher
    #: does (streams then diff only the names that changed), or comes unrelated (streams
    #: compare everything).
    follow = True

    def __init__(self, snapshot: Snapshot, shared: Shared | None = None) -> None:
        self.recorder = Recorder()
        self.protocol = DeltaProtocol(self.recorder, shared)
        self.snapshot = snapshot
        self.first = True
        self.held: dict[str, dict[str, str]] = {}

    def request(
        self,
        type_url: str,
        subscribe: list[str] | None = None,
        unsubscribe: list[str] | None = None,
        *,
        nonce: str = "",
        error: str | None = None,
        initial: dict[str, str] | None = None,
    ) -> list[DeltaDiscoveryResponse]:
        message = DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe or [],
            resource_names_unsubscribe=unsubscribe or [],
            response_nonce=nonce,
            error_detail=Status(code=3, message=error) if error else None,
            initial_resource_versions=initial or {},
        )
        if self.first:
            message.node = Node(id="proxy-d")
            self.first = False
        self.protocol.receive(message)
        return self.pump()

    def ack(self, response: DeltaDiscoveryResponse) -> list[DeltaDiscoveryResponse]:
        return self.request(response.type_url, nonce=response.nonce)

    def update(self, snapshot: Snapshot, *, related: bool = False) -> list[DeltaDiscoveryResponse]:
        """Hand the stream `snapshot`; unless `related` (already built knowing the one it
        replaces), first build it again knowing the client's current one, in followed mode."""
        if self.follow and not related:  # the same content, built knowing the snapshot it replaces
            snapshot = Snapshot(snapshot.parts(), snapshot.created, previous=self.snapshot)
        self.snapshot = snapshot
        return self.pump()

    def pump(self) -> list[DeltaDiscoveryResponse]:
        out = [DeltaDiscoveryResponse.parse(o.payload) for o in self.protocol.responses(self.snapshot)]
        for response in out:
            held = self.held.setdefault(response.type_url, {})
            for resource in response.resources:
                held[resource.name] = resource.version
            for name in response.removed_resources:
                held.pop(name, None)
        return out

    def ack_all(self, responses: list[DeltaDiscoveryResponse]) -> list[DeltaDiscoveryResponse]:
        out: list[DeltaDiscoveryResponse] = []
        for response in responses:
            out += self.ack(response)
        return out


@pytest.fixture(autouse=True, params=[True, False], ids=["followed", "unrelated"])
def _lineage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rule must hold both on the O(changed) path and on the full comparison."""
    monkeypatch.setattr(Client, "follow", request.param)


def updated(response: DeltaDiscoveryResponse) -> list[str]:
    return [resource.name for resource in response.resources]


def subscribe_all(client: Client) -> None:
    for type_url, names in ((CDS, []), (EDS, ["a", "b"]), (LDS, []), (RDS, ["r1"])):
        pending = client.request(type_url, names)
        while pending:
            pending = client.ack_all(pending)


def test_rule12_nonce_on_every_response_and_nack_by_error_detail() -> None:
    world = World()
    client = Client(world.snapshot())
    (response,) = client.request(CDS)
    assert response.nonce
    world.clusters["a"] = 4
    assert client.update(world.snapshot()) == []  # one outstanding response per type
    (change,) = client.ack(response)
    assert change.nonce and change.nonce != response.nonce
    assert client.request(CDS, nonce=change.nonce, error="rejected a") == []
    assert client.recorder.nacks[0][2].message == "rejected a"
    assert client.pump() == []  # the rejected content is not sent again
    world.clusters["a"] = 5
    (fixed,) = client.update(world.snapshot())
    assert updated(fixed) == ["a"]


def test_rule13_subscriptions_apply_even_with_a_stale_nonce() -> None:
    client = Client(World().snapshot())
    (first,) = client.request(EDS, ["a"])
    client.ack(first)
    (second,) = client.request(EDS, ["b"], nonce=first.nonce)  # first.nonce is current: ACK + subscribe
    out = client.request(EDS, ["r-none"], ["a"], nonce="stale-nonce")
    assert client.recorder.stale == [EDS]
    assert client.protocol.status()["eds"]["names"] == ["b", "r-none"]  # type: ignore[index]
    assert out == []  # "b" awaits its ACK; nothing else changed yet
    (missing,) = client.ack(second)
    assert missing.removed_resources == ["r-none"]


def test_rule14_reconnect_with_initial_versions_gets_only_what_changed() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    held = dict(client.held[CDS])
    world.clusters["b"] = 6
    world.clusters["c"] = 0
    reconnect = Client(world.snapshot())
    (response,) = reconnect.request(CDS, initial=held)
    assert updated(response) == ["b", "c"]  # "a" is held at the current version
    # A name listed in resource_names_subscribe is sent regardless of initial versions.
    eds_held = dict(client.held[EDS])
    (eds,) = reconnect.request(EDS, ["a"], initial=eds_held)
    assert updated(eds) == ["a"]


def test_rule15_unsubscribe_stops_updates_and_needs_no_answer() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    assert client.request(EDS, unsubscribe=["b"]) == []
    assert client.request(EDS, unsubscribe=["never-subscribed"]) == []
    world.endpoints["b"] = (1,)
    assert client.update(world.snapshot()) == []
    world.endpoints["a"] = (2,)
    (change,) = client.update(world.snapshot())
    assert updated(change) == ["a"]


def test_rule15_wildcard_keeps_an_unsubscribed_name_it_covers() -> None:
    world = World()
    client = Client(world.snapshot())
    (response,) = client.request(CDS, ["*", "a"])
    client.ack(response)
    assert client.request(CDS, unsubscribe=["a"]) == []
    world.clusters["a"] = 2
    (change,) = client.update(world.snapshot())
    assert updated(change) == ["a"]  # still covered by the wildcard


def test_rule16_deletions_and_missing_names_in_removed_resources_once() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    (missing,) = client.request(EDS, ["nope"])
    assert missing.removed_resources == ["nope"]
    client.ack(missing)
    assert client.pump() == []  # said once
    del world.clusters["b"]
    (removed,) = client.update(world.snapshot())
    assert removed.type_url == CDS
    assert removed.removed_resources == ["b"]
    assert updated(removed) == []


def test_rule17_each_resource_carries_its_content_version() -> None:
    world = World()
    snapshot = world.snapshot()
    client = Client(snapshot)
    (response,) = client.request(CDS)
    assert {r.name: r.version for r in response.resources} == {
        name: resource.version for name, resource in snapshot.resources(CDS).items()
    }
    assert response.system_version_info == snapshot.version(CDS)


def test_multi_type_change_in_make_before_break_order_removals_last() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    del world.clusters["b"]
    world.clusters["c"] = 0
    world.endpoints["c"] = (3,)
    world.listeners["http"] = 10001
    out = client.update(world.snapshot())
    assert [r.type_url for r in out] == [CDS, LDS]
    assert updated(out[0]) == ["c"] and out[0].removed_resources == []
    eds = client.request(EDS, ["c"], nonce="")
    assert [updated(r) for r in eds] == [["c"]]
    final = client.ack_all([*out, *eds])
    assert [(r.type_url, r.removed_resources) for r in final] == [(CDS, ["b"])]


def test_identical_content_sends_nothing() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    assert client.update(world.snapshot()) == []


def test_cluster_update_resends_its_endpoints() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    world.clusters["a"] = 11
    cds, eds = client.update(world.snapshot())
    assert (cds.type_url, updated(cds)) == (CDS, ["a"])
    assert (eds.type_url, updated(eds)) == (EDS, ["a"])


def test_streams_of_one_class_share_subscriptions_and_held_versions() -> None:
    """With many streams a copy of the name sets and versions per stream was most of the
    server's memory: streams that hold the same content keep references to shared objects,
    and a stream that diverges gets its own copy without touching the shared one."""
    world = World()
    initial = world.snapshot()
    # Streams of one server share one `Shared` (the server makes it).
    shared = Shared()
    first, second = Client(initial, shared), Client(initial, shared)
    subscribe_all(first)
    subscribe_all(second)
    world.endpoints["a"] = (9001,)
    snapshot = world.snapshot()
    if Client.follow:  # built once for every stream of the class, as the publisher does
        snapshot = Snapshot(snapshot.parts(), snapshot.created, previous=initial)
    for client in (first, second):
        client.ack_all(client.update(snapshot, related=True))
    a, b = first.protocol._types, second.protocol._types
    for type_url in (CDS, EDS, LDS, RDS):
        assert a[type_url].names is b[type_url].names
        assert a[type_url].known is b[type_url].known
        assert any(a[type_url].known is s.versions(type_url) for s in (initial, snapshot))
    assert a[EDS].known is snapshot.versions(EDS)
    assert first.request(EDS, unsubscribe=["b"]) == []
    assert dict(a[EDS].known) == {"a": snapshot.versions(EDS)["a"]}
    assert b[EDS].known is snapshot.versions(EDS) and set(b[EDS].known) == {"a", "b"}
