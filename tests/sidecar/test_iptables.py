"""The init container's iptables rules: rendering, annotation parsing, and the rules applied
for real in a pod network namespace, proven with real connections."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from meshcp.model.meshconfig import MeshConfig
from meshcp.sidecar.iptables import (
    INBOUND_PORT_EXCLUSIONS,
    OUTBOUND_IP_EXCLUSIONS,
    OUTBOUND_IP_INCLUSIONS,
    OUTBOUND_PORT_EXCLUSIONS,
    ExclusionError,
    Redirection,
    init_command,
    redirection_for,
    render,
)
from tests.sidecar.netns import PEER_IP, PEER_IP_2, POD_IP, PodNetwork

APP_UID = 1000
ENVOY_UID = 1500
POD_PORTS = [15001, 15003, 15010, 15901, 8080, 8081]
PEER_PORTS = [8080, 9000, 15010]


# --- rendering and parsing ----------------------------------------------------------------


def test_rules_follow_osm_chains() -> None:
    script = render(Redirection())
    lines = script.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    for chain in ("PROXY_INBOUND", "PROXY_IN_REDIRECT", "PROXY_OUTPUT", "PROXY_REDIRECT"):
        assert f":{chain} - [0:0]" in lines
    assert "-A PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in lines
    assert "-A PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15003" in lines
    # Envoy's own traffic and loopback are decided before any redirection.
    uid = lines.index("-A PROXY_OUTPUT -m owner --uid-owner 1500 -j RETURN")
    loopback = lines.index("-A PROXY_OUTPUT -d 127.0.0.0/8 -j RETURN")
    assert uid < loopback < lines.index("-A PROXY_OUTPUT -j PROXY_REDIRECT")
    for port in (15000, 15010, 15901, 15902, 15903):
        assert f"-A PROXY_INBOUND -p tcp --dport {port} -j RETURN" in lines
        assert f"-A PROXY_OUTPUT -p tcp --dport {port} -j RETURN" in lines
    # Inbound 15001 is redirected to the mTLS listener, never served by the outbound one.
    assert "-A PROXY_INBOUND -p tcp --dport 15001 -j RETURN" not in lines


def test_rendering_is_deterministic() -> None:
    a = redirection_for(
        {OUTBOUND_PORT_EXCLUSIONS: "9000, 25,25"}, MeshConfig(outbound_port_exclusions=(587,))
    )
    b = redirection_for({OUTBOUND_PORT_EXCLUSIONS: "25,9000"}, MeshConfig(outbound_port_exclusions=(587,)))
    assert a.outbound_port_exclusions == (25, 587, 9000)
    assert render(a) == render(b)


def test_inclusions_replace_the_catch_all() -> None:
    script = render(Redirection(outbound_ip_inclusions=(IPv4Network("10.0.0.0/8"),)))
    assert "-A PROXY_OUTPUT -d 10.0.0.0/8 -j PROXY_REDIRECT" in script
    assert "-A PROXY_OUTPUT -j PROXY_REDIRECT" not in script


def test_annotations_merge_with_meshconfig() -> None:
    mesh = MeshConfig(
        outbound_ip_exclusions=("169.254.169.254/32", "fd00::/8"),
        outbound_port_exclusions=(25,),
        inbound_port_exclusions=(9100,),
    )
    rules = redirection_for(
        {
            OUTBOUND_IP_EXCLUSIONS: " 10.1.2.3/8 ,192.168.0.7",
            OUTBOUND_PORT_EXCLUSIONS: "3306",
            INBOUND_PORT_EXCLUSIONS: "9100,8443,",
            OUTBOUND_IP_INCLUSIONS: "10.96.0.0/12",
        },
        mesh,
    )
    assert rules.outbound_ip_exclusions == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("169.254.169.254/32"),
        IPv4Network("192.168.0.7/32"),
    )
    assert rules.outbound_port_exclusions == (25, 3306)
    assert rules.inbound_port_exclusions == (8443, 9100)
    assert rules.outbound_ip_inclusions == (IPv4Network("10.96.0.0/12"),)


@pytest.mark.parametrize(
    ("annotation", "value", "reason"),
    [
        (OUTBOUND_PORT_EXCLUSIONS, "80,http", "'http' is not a port"),
        (INBOUND_PORT_EXCLUSIONS, "0", "'0' is not a port"),
        (INBOUND_PORT_EXCLUSIONS, "65536", "'65536' is not a port"),
        (OUTBOUND_PORT_EXCLUSIONS, "+80", "'+80' is not a port"),
        (OUTBOUND_IP_EXCLUSIONS, "10.0.0.0/33", "not an IPv4 CIDR"),
        (OUTBOUND_IP_INCLUSIONS, "example.com", "not an IPv4 CIDR"),
        (OUTBOUND_IP_EXCLUSIONS, "fd00::/8", "IPv6"),
    ],
)
def test_invalid_annotations_name_annotation_and_value(annotation: str, value: str, reason: str) -> None:
    with pytest.raises(ExclusionError) as caught:
        redirection_for({annotation: value}, MeshConfig())
    message = str(caught.value)
    assert annotation in message and repr(value) in message and reason in message


def test_init_command_applies_the_script_without_flushing() -> None:
    script = render(Redirection())
    command = init_command(script)
    assert command[:2] == ["/bin/sh", "-c"]
    assert command[2] == f"iptables-restore --noflush <<'EOF'\n{script}EOF\n"


# --- the rules applied for real -------------------------------------------------------------


@pytest.fixture
def net() -> Iterator[PodNetwork]:
    with PodNetwork.create() as network:
        yield network


def apply(net: PodNetwork, redirection: Redirection) -> None:
    """What the init container does: its exact command, in the pod's namespace."""
    net.run_in_pod(init_command(render(redirection)))
    assert ":PROXY_OUTPUT" in net.nat_rules()


def test_outbound_redirection(net: PodNetwork) -> None:
    apply(net, Redirection())
    with net.serve(net.pod, "pod", POD_PORTS), net.serve(net.peer, "peer", PEER_PORTS):
        # The application's traffic to another address lands on Envoy's outbound listener,
        # which can still tell where it was going.
        landed = net.connect(net.pod, PEER_IP, 8080, uid=APP_UID)
        assert landed == {"host": "pod", "listener": 15001, "original_dst": f"{PEER_IP}:8080"}
        # Envoy's own traffic goes where it is addressed.
        assert net.connect(net.pod, PEER_IP, 8080, uid=ENVOY_UID)["host"] == "peer"
        # Loopback stays local; the pod's own IP through lo is redirected like any address.
        assert net.connect(net.pod, "127.0.0.1", 8080, uid=APP_UID)["listener"] == 8080
        own = net.connect(net.pod, POD_IP, 8080, uid=APP_UID)
        assert own == {"host": "pod", "listener": 15001, "original_dst": f"{POD_IP}:8080"}
        assert net.connect(net.pod, POD_IP, 8080, uid=ENVOY_UID)["listener"] == 8080
        # Other sidecars' plaintext listeners (a meshed Prometheus scraping 15010) bypass.
        assert net.connect(net.pod, PEER_IP, 15010, uid=APP_UID)["host"] == "peer"


def test_inbound_redirection(net: PodNetwork) -> None:
    apply(net, Redirection())
    with net.serve(net.pod, "pod", POD_PORTS):
        landed = net.connect(net.peer, POD_IP, 8080)
        assert landed == {"host": "pod", "listener": 15003, "original_dst": f"{POD_IP}:8080"}
        # Probes and metrics reach their listeners without mTLS.
        assert net.connect(net.peer, POD_IP, 15901)["listener"] == 15901
        assert net.connect(net.peer, POD_IP, 15010)["listener"] == 15010
        # The outbound listener is not reachable from outside: 15001 goes to the inbound one.
        assert net.connect(net.peer, POD_IP, 15001)["listener"] == 15003


def test_annotation_exclusions_bypass_envoy(net: PodNetwork) -> None:
    annotations = {
        OUTBOUND_PORT_EXCLUSIONS: "9000",
        INBOUND_PORT_EXCLUSIONS: "8081",
        OUTBOUND_IP_EXCLUSIONS: f"{PEER_IP_2}/32",
    }
    apply(net, redirection_for(annotations, MeshConfig()))
    with net.serve(net.pod, "pod", POD_PORTS), net.serve(net.peer, "peer", PEER_PORTS):
        assert net.connect(net.pod, PEER_IP, 8080, uid=APP_UID)["listener"] == 15001
        assert net.connect(net.pod, PEER_IP, 9000, uid=APP_UID)["host"] == "peer"
        assert net.connect(net.pod, PEER_IP_2, 8080, uid=APP_UID)["host"] == "peer"
        assert net.connect(net.peer, POD_IP, 8081)["listener"] == 8081
        assert net.connect(net.peer, POD_IP, 8080)["listener"] == 15003


def test_inclusions_limit_outbound_redirection(net: PodNetwork) -> None:
    annotations = {OUTBOUND_IP_INCLUSIONS: f"{PEER_IP}/32,10.99.0.0/16"}
    apply(net, redirection_for(annotations, MeshConfig()))
    with net.serve(net.pod, "pod", POD_PORTS), net.serve(net.peer, "peer", PEER_PORTS):
        assert net.connect(net.pod, PEER_IP, 8080, uid=APP_UID)["listener"] == 15001
        assert net.connect(net.pod, PEER_IP_2, 8080, uid=APP_UID)["host"] == "peer"
        # Inbound is unaffected by outbound inclusions.
        assert net.connect(net.peer, POD_IP, 8080)["listener"] == 15003


def test_exclusions_win_over_inclusions(net: PodNetwork) -> None:
    annotations = {OUTBOUND_IP_INCLUSIONS: "10.251.0.0/24", OUTBOUND_IP_EXCLUSIONS: PEER_IP_2}
    apply(net, redirection_for(annotations, MeshConfig()))
    with net.serve(net.pod, "pod", POD_PORTS), net.serve(net.peer, "peer", PEER_PORTS):
        assert net.connect(net.pod, PEER_IP, 8080, uid=APP_UID)["listener"] == 15001
        assert net.connect(net.pod, PEER_IP_2, 8080, uid=APP_UID)["host"] == "peer"
