"""State-of-the-world ADS rules (numbers as in docs/xds-protocol.md), driven as a client would."""

from __future__ import annotations

import pytest

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.config.endpoint.v3 import ClusterLoadAssignment
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshcp._proto.google.rpc import Status
from meshcp.cache import Snapshot
from meshcp.xds.sotw import SotwProtocol
from meshcp.xds.stream import Nack, Shared
from tests.factories import CDS, EDS, LDS, RDS, SDS, World


class Recorder:
    def __init__(self) -> None:
        self.acks: list[str] = []
        self.nacks: list[tuple[str, str, Nack]] = []
        self.stale: list[str] = []

    def on_ack(self, type_url: str, latency: float) -> None:
        self.acks.append(type_url)

    def on_nack(self, node_id: str, type_url: str, nack: Nack) -> None:
        self.nacks.append((node_id, type_url, nack))

    def on_stale(self, type_url: str) -> None:
        self.stale.append(type_url)

    def on_response(self, outgoing: object) -> None:
        pass


class Client:
    """Drives one SotwProtocol like an Envoy would, decoding every response."""

    #: Whether a new snapshot is built with the previous one as `previous`, as the publisher
    #: does (streams then diff only the names that changed), or comes unrelated (streams
    #: compare everything).
    follow = True

    def __init__(self, snapshot: Snapshot, shared: Shared | None = None) -> None:
        self.recorder = Recorder()
        self.protocol = SotwProtocol(self.recorder, shared)
        self.snapshot = snapshot
        self.last: dict[str, DiscoveryResponse] = {}
        self.first = True

    def request(
        self,
        type_url: str,
        names: list[str] | None = None,
        *,
        nonce: str | None = None,
        version: str | None = None,
        error: str | None = None,
    ) -> list[DiscoveryResponse]:
        last = self.last.get(type_url)
        message = DiscoveryRequest(
            type_url=type_url,
            resource_names=names or [],
            response_nonce=nonce if nonce is not None else (last.nonce if last else ""),
            version_info=version
            if version is not None
            else (last.version_info if last and error is None else ""),
            error_detail=Status(code=3, message=error) if error else None,
        )
        if self.first:
            message.node = Node(id="proxy-1")
            self.first = False
        self.protocol.receive(message)
        return self.pump()

    def ack(self, response: DiscoveryResponse, names: list[str] | None = None) -> list[DiscoveryResponse]:
        return self.request(response.type_url, names, nonce=response.nonce, version=response.version_info)

    def update(self, snapshot: Snapshot) -> list[DiscoveryResponse]:
        if self.follow:  # the same content, built knowing the snapshot it replaces
            snapshot = Snapshot(snapshot.parts(), snapshot.created, previous=self.snapshot)
        self.snapshot = snapshot
        return self.pump()

    def pump(self) -> list[DiscoveryResponse]:
        out = [DiscoveryResponse.parse(o.payload) for o in self.protocol.responses(self.snapshot)]
        for response in out:
            self.last[response.type_url] = response
        return out


@pytest.fixture(autouse=True, params=[True, False], ids=["followed", "unrelated"])
def _lineage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rule must hold both on the O(changed) path and on the full comparison."""
    monkeypatch.setattr(Client, "follow", request.param)


def names(response: DiscoveryResponse) -> list[str]:
    out = []
    for packed in response.resources:
        message = packed.unpack()
        out.append(getattr(message, "name", "") or getattr(message, "cluster_name", ""))
    return out


def subscribe_all(client: Client) -> None:
    """Subscribe like Envoy: CDS, EDS (a, b), LDS, RDS (r1); ACK everything."""
    for type_url, wanted in ((CDS, None), (EDS, ["a", "b"]), (LDS, None), (RDS, ["r1"])):
        for response in client.request(type_url, wanted):
            client.ack(response, wanted)


def test_rule1_every_response_has_a_fresh_nonce() -> None:
    client = Client(World().snapshot())
    first = client.request(CDS)
    second = client.request(LDS)
    assert first[0].nonce and second[0].nonce
    assert first[0].nonce != second[0].nonce


def test_rule2_node_is_remembered_from_the_first_request() -> None:
    client = Client(World().snapshot())
    client.request(CDS)
    client.request(LDS)  # no node on later requests
    assert client.protocol.node is not None
    assert client.protocol.node.id == "proxy-1"


def test_rule3_nack_keeps_last_good_config_is_recorded_and_not_resent() -> None:
    world = World()
    client = Client(world.snapshot())
    (good,) = client.request(CDS)
    assert client.ack(good) == []
    world.clusters["a"] = 7
    (bad,) = client.update(world.snapshot())
    # The client rejects it: version_info is the last version it accepted.
    assert client.request(CDS, nonce=bad.nonce, version=good.version_info, error="bad cluster a") == []
    node_id, type_url, nack = client.recorder.nacks[0]
    assert (node_id, type_url, nack.message, nack.version) == (
        "proxy-1",
        CDS,
        "bad cluster a",
        bad.version_info,
    )
    status = client.protocol.status()["cds"]
    assert status["version_acked"] == good.version_info  # type: ignore[index]
    assert status["last_nack"]["message"] == "bad cluster a"  # type: ignore[index]
    # Unrelated wake-ups (another type, same content) never re-send the rejected version.
    assert client.pump() == []
    assert client.update(world.snapshot()) == []
    # A content change after the NACK is pushed.
    world.clusters["a"] = 8
    (fixed,) = client.update(world.snapshot())
    assert fixed.version_info not in (bad.version_info, good.version_info)


def test_rule4_identical_content_sends_nothing_and_names_are_unique() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    assert client.update(world.snapshot()) == []
    world.endpoints["a"] = (1, 2)
    (eds,) = client.update(world.snapshot())
    assert names(eds) == ["a"]  # only the changed one, once


def test_rule5_stale_nonce_gets_no_response_and_changes_nothing() -> None:
    world = World()
    client = Client(world.snapshot())
    (first,) = client.request(CDS)
    world.clusters["c"] = 0
    client.snapshot = world.snapshot()
    (second,) = client.request(CDS, nonce=first.nonce)  # ACK of first; the update follows
    assert "c" in names(second)
    assert client.request(EDS, ["a"]) != []
    # A request carrying the superseded nonce is stale: ignored entirely.
    assert client.request(CDS, ["only-this"], nonce=first.nonce) == []
    assert client.recorder.stale == [CDS]
    assert client.protocol.status()["cds"]["wildcard"] is True  # type: ignore[index]


def test_rule6_newer_request_replaces_the_subscription() -> None:
    client = Client(World().snapshot())
    (first,) = client.request(EDS, ["a"])
    assert names(first) == ["a"]
    (second,) = client.request(EDS, ["b"], nonce=first.nonce)
    assert names(second) == ["b"]
    assert client.protocol.status()["eds"]["names"] == ["b"]  # type: ignore[index]


def test_rule7_full_state_listeners_and_clusters_partial_endpoints() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    world.clusters["c"] = 0
    (cds,) = client.update(world.snapshot())
    assert names(cds) == ["a", "b", "c"]  # full state, not just the new one
    client.ack(cds)
    world.clusters.clear()
    (empty,) = client.update(world.snapshot())
    assert names(empty) == []  # an empty full-state response deletes all
    client.ack(empty)
    world.endpoints["b"] = (9,)
    (eds,) = client.update(world.snapshot())
    assert names(eds) == ["b"]  # endpoints may be partial


def test_rule8_wildcard_legacy_explicit_and_union() -> None:
    world = World()
    legacy = Client(world.snapshot())
    (response,) = legacy.request(CDS)
    assert names(response) == ["a", "b"]
    # Once names are given, an empty list means "none" (not wildcard any more).
    (named,) = legacy.request(CDS, ["a"], nonce=response.nonce)
    assert names(named) == ["a"]
    (none,) = legacy.request(CDS, [], nonce=named.nonce)
    assert names(none) == []

    explicit = Client(world.snapshot())
    (union,) = explicit.request(CDS, ["*", "a"])
    assert names(union) == ["a", "b"]
    # Legacy wildcard is only for listeners and clusters.
    assert Client(world.snapshot()).request(EDS, []) == []


def test_rule9_newly_requested_names_are_sent_even_if_sent_before() -> None:
    client = Client(World().snapshot())
    (only_a,) = client.request(EDS, ["a"])
    assert names(only_a) == ["a"]
    (only_b,) = client.request(EDS, ["b"], nonce=only_a.nonce)
    assert names(only_b) == ["b"]
    (both,) = client.request(EDS, ["a", "b"], nonce=only_b.nonce)
    assert names(both) == ["a"]  # "a" was sent before, dropped, and is requested again


def test_rule10_names_requested_before_they_exist_are_sent_when_they_appear() -> None:
    world = World()
    client = Client(world.snapshot())
    (response,) = client.request(RDS, ["r1", "later"])
    assert names(response) == ["r1"]
    client.ack(response, ["r1", "later"])
    world.routes.add("later")
    (appeared,) = client.update(world.snapshot())
    assert names(appeared) == ["later"]


def test_rule11_reconnect_with_current_version_gets_no_push() -> None:
    world = World()
    snapshot = world.snapshot()
    reconnect = Client(snapshot)
    assert reconnect.request(CDS, version=snapshot.version(CDS)) == []
    assert reconnect.request(LDS, version=snapshot.version(LDS)) == []
    stale = Client(snapshot)
    (response,) = stale.request(CDS, version="an-old-version")
    assert names(response) == ["a", "b"]
    # Only for wildcard subscriptions: named endpoint requests are always answered.
    assert Client(snapshot).request(EDS, ["a"], version=snapshot.version(EDS)) != []


def test_rule18_multi_type_change_arrives_in_make_before_break_order() -> None:
    world = World()
    client = Client(world.snapshot())
    for response in client.request(SDS, ["s"]):
        client.ack(response, ["s"])
    subscribe_all(client)
    world.clusters["a"] = 3
    world.endpoints["a"] = (5,)
    world.listeners["http"] = 10001
    world.routes = {"r1", "r2"}
    world.secrets = {"s"}
    # route r2 is not requested yet: RDS sends nothing for it
    out = client.update(world.snapshot())
    assert [r.type_url for r in out] == [CDS, EDS, LDS, SDS]


def test_rule18_removed_cluster_stays_until_the_rest_is_acked() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    # Switch the listener from cluster "b" to a new cluster "c": "b" is removed.
    del world.clusters["b"]
    del world.endpoints["b"]
    world.clusters["c"] = 0
    world.endpoints["c"] = (7,)
    world.listeners["http"] = 10002
    cds, lds = client.update(world.snapshot())
    assert names(cds) == ["a", "b", "c"]  # make: "b" kept while the new config lands
    assert lds.type_url == LDS
    assert client.ack(cds) == []
    (eds,) = client.request(EDS, ["a", "c"], nonce=client.last[EDS].nonce)
    assert names(eds) == ["c"]
    assert client.ack(eds, ["a", "c"]) == []
    (final,) = client.ack(lds)
    assert final.type_url == CDS
    assert names(final) == ["a", "c"]  # break: "b" removed last


def test_rule19_cluster_update_resends_its_endpoints() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    world.clusters["a"] = 9  # the cluster changes, its endpoints do not
    cds, eds = client.update(world.snapshot())
    assert cds.type_url == CDS
    assert eds.type_url == EDS
    assert names(eds) == ["a"]


def test_rule21_one_outstanding_push_per_type_then_the_latest() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    world.endpoints["a"] = (1,)
    (first,) = client.update(world.snapshot())
    world.endpoints["a"] = (2,)
    assert client.update(world.snapshot()) == []  # waits for the ACK
    world.endpoints["a"] = (3,)
    assert client.update(world.snapshot()) == []
    (latest,) = client.ack(first, ["a", "b"])
    assert names(latest) == ["a"]
    assignment = latest.resources[0].unpack()
    assert isinstance(assignment, ClusterLoadAssignment)
    endpoint = assignment.endpoints[0].lb_endpoints[0].endpoint
    assert endpoint is not None and endpoint.address is not None
    assert endpoint.address.socket_address is not None
    assert endpoint.address.socket_address.port_value == 3
    assert client.recorder.acks.count(EDS) == 2


def test_ack_records_version_for_debugging() -> None:
    client = Client(World().snapshot())
    (response,) = client.request(CDS)
    client.ack(response)
    status = client.protocol.status()["cds"]
    assert status["version_acked"] == response.version_info  # type: ignore[index]
    assert status["awaiting_ack"] is False  # type: ignore[index]


def test_nacked_resource_is_never_kept_as_removed() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    world.listeners["bad"] = 70000
    (rejected,) = client.update(world.snapshot())
    assert names(rejected) == ["bad", "http"]
    assert client.request(LDS, nonce=rejected.nonce, version="", error="port out of range") == []
    del world.listeners["bad"]
    world.listeners["extra"] = 10005
    (fixed,) = client.update(world.snapshot())
    assert names(fixed) == ["extra", "http"]  # the client never held "bad": nothing to keep


def test_nacks_during_make_before_break_settle_without_a_loop() -> None:
    world = World()
    client = Client(world.snapshot())
    subscribe_all(client)
    del world.clusters["b"]
    world.clusters["a"] = 1
    cds, eds = client.update(world.snapshot())
    assert names(cds) == ["a", "b"]
    assert client.request(CDS, nonce=cds.nonce, error="cluster a is invalid") == []
    # Once the rest is settled, the version without the removed cluster (different
    # content) is sent once.
    (final,) = client.ack(eds, ["a", "b"])
    assert (final.type_url, names(final)) == (CDS, ["a"])
    assert client.request(CDS, nonce=final.nonce, error="cluster a is invalid") == []
    assert client.pump() == []
    assert len(client.recorder.nacks) == 2


def test_streams_of_one_class_share_subscriptions_and_held_content() -> None:
    """What each stream holds is the snapshot's own mapping and one shared name set, not
    a copy per stream (memory with many streams)."""
    world = World()
    snapshot = world.snapshot()
    # Streams of one server share one `Shared` (the server makes it).
    shared = Shared()
    clients = [Client(snapshot, shared), Client(snapshot, shared)]
    for client in clients:
        for type_url, requested in ((CDS, []), (EDS, ["a", "b"]), (LDS, []), (RDS, ["r1"])):
            for response in client.request(type_url, requested):
                client.ack(response, requested)
    a, b = (client.protocol._types for client in clients)
    for type_url in (CDS, EDS, LDS, RDS):
        assert a[type_url].names is b[type_url].names
        assert a[type_url].held is b[type_url].held is snapshot.resources(type_url)


def test_streams_asking_the_same_names_share_one_framed_response() -> None:
    """Framing a named response costs as much as the resources it holds: the streams of a
    class, which ask for the same names, get it framed once per snapshot."""
    world = World()
    snapshot = world.snapshot()
    shared = Shared()
    sent: list[DiscoveryResponse] = []
    for client in (Client(snapshot, shared), Client(snapshot, shared)):
        sent += client.request(EDS, ["a", "b"])
    named = [key for key in shared.framed.keys(snapshot) if isinstance(key, tuple) and key[0] == "sotw-named"]
    assert named == [("sotw-named", EDS, snapshot.version(EDS), ("a", "b"))]
    assert len(sent) == 2 and sent[0].resources == sent[1].resources
    assert shared.framed.found >= 1
    assert [r.version_info for r in sent] == [snapshot.version(EDS)] * 2
