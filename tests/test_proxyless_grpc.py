"""Proxyless gRPC on loopback: grpcio's own xDS client and server (no sidecar anywhere),
bootstrapped by `meshcp bootstrap --proxyless` against a running `meshcp serve`, under
SMI policies. Every test also checks that no gRPC node NACKed anything."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

from tests.support import eventually
from tests.support.proxyless import ADDRESSES, MESHCP, PORT, Mesh, running_mesh, servers_manifest

SPIFFE_CLIENT = "spiffe://cluster.local/ns/shop/sa/client"
#: What gRPC's fault filter says when it aborts a call (the denied listener's answer).
LOCAL_DENIAL = "PERMISSION_DENIED: Fault injected"


def target(service: str) -> str:
    return f"xds:///{service}.shop.svc.cluster.local:{PORT}"


async def test_without_pruning_the_servers_rbac_refuses_an_identity(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, prune=False) as mesh:
        await mesh.server("greeter-v1-0", "v1")
        result = await mesh.calls("client-0", target("greeter-v1"), 1)
        assert result["answers"] == {"v1": 1}, result
        # The intruder has the service's listener, and the call reaches the server.
        result = await mesh.calls("intruder-0", target("greeter-v1"), 2, warmup=False)
        assert result["failures"] == {"PERMISSION_DENIED": 2}, result
        assert result["details"] == ["PERMISSION_DENIED: Unauthorized RPC rejected"] * 2, result
        assert_no_nack(mesh)


def assert_no_nack(mesh: Mesh) -> None:
    assert mesh.metric("meshcp_xds_nacks_total") == 0, [
        (p["node_id"], {t: d.get("last_nack") for t, d in p["types"].items()}) for p in mesh.proxies()
    ]


async def test_calls_over_mesh_mtls_rbac_split_and_a_missing_listener(tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as mesh:
        await mesh.server("greeter-v1-0", "v1")
        await mesh.server("greeter-v2-0", "v2")

        # mTLS with mesh certificates: the server saw the client's SPIFFE identity over TLS.
        for name, service in (("v1", "greeter-v1"), ("v2", "greeter-v2")):
            result = await mesh.calls("client-0", target(service), 3)
            assert result["answers"] == {name: 3}, result
            assert not result["failures"], result
            assert result["peers"] == [f"tls client.shop.cluster.local {SPIFFE_CLIENT}"], result
        # Every name a client may dial reaches the service (without the port: its only port).
        for dialled in ("greeter-v1", "greeter-v1.shop", "greeter-v1.shop.svc:50051"):
            result = await mesh.calls("client-0", f"xds:///{dialled}", 1)
            assert result["answers"] == {"v1": 1}, (dialled, result)

        # A method outside the TrafficTarget's HTTPRouteGroup (`/meshtest.Echo/.*`) is
        # refused to the allowed client: gRPC methods are matched as HTTP paths.
        health = "/grpc.health.v1.Health/Check"
        result = await mesh.calls("client-0", target("greeter-v1"), 2, warmup=False, method=health)
        assert result["failures"] == {"PERMISSION_DENIED": 2}, result

        # An identity without a TrafficTarget is refused by its own gRPC (pruning, the
        # default): the denied listener's fault filter answers, so no call left the client
        # (the server's RBAC would say otherwise: the test below).
        result = await mesh.calls("intruder-0", target("greeter-v1"), 3, warmup=False)
        assert result["failures"] == {"PERMISSION_DENIED": 3}, result
        assert result["details"] == [LOCAL_DENIAL] * 3, result
        assert not result["answers"] and not result["peers"], result

        # TrafficSplit 80/20: 500 calls within 3 sigma of 400.
        calls = 500
        result = await mesh.calls("client-0", target("greeter"), calls)
        assert not result["failures"], result
        v1 = result["answers"].get("v1", 0)
        assert v1 + result["answers"].get("v2", 0) == calls, result
        sigma = math.sqrt(calls * 0.8 * 0.2)
        assert abs(v1 - calls * 0.8) <= 3 * sigma, result

        # A listener that does not exist: the protocol's "does not exist", not a hang.
        result = await mesh.calls("client-0", target("nosuch"), 1, warmup=False)
        assert result["failures"] == {"UNAVAILABLE": 1}, result
        assert "does not exist" in result["details"][0], result

        # /debug/proxies tells proxyless nodes apart, each on its grpc: class.
        proxies = mesh.proxies()
        assert proxies, "no connected proxy"
        assert {p["flavour"] for p in proxies} == {"proxyless-grpc"}, proxies
        assert all(str(p["class"]).startswith("grpc:shop/greeter#") for p in proxies), proxies
        assert_no_nack(mesh)


async def test_endpoint_change_is_followed_without_failed_calls(tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as mesh:
        await mesh.server("greeter-v1-0", "v1-0")
        stop = tmp_path / "stop-calls"
        client = await mesh.client_loop("client-0", target("greeter-v1"), stop)
        assert client.stdout is not None
        seen = json.loads(await asyncio.wait_for(client.stdout.readline(), 60))
        assert seen == {"seen": "v1-0"}

        # A server added: the client starts using it.
        added = {"greeter-v1-1": (ADDRESSES["greeter-v1-1"], "v1")}
        mesh.write("servers.yaml", servers_manifest(mesh.ports, added))
        await mesh.server("greeter-v1-1", "v1-1")
        seen = json.loads(await asyncio.wait_for(client.stdout.readline(), 60))
        assert seen == {"seen": "v1-1"}

        # One removed: out of the mesh first, stopped once the client holds the change.
        before = _client_eds(mesh)
        remaining = {k: v for k, v in mesh.ports.items() if k != "greeter-v1-0"}
        mesh.write("servers.yaml", servers_manifest(remaining, added))

        async def client_holds_it() -> bool:
            eds = _client_eds(mesh)
            return bool(eds.get("current")) and eds.get("version_acked") != before.get("version_acked")

        await eventually(client_holds_it, 60, "the client to ACK the endpoints without greeter-v1-0")
        first = mesh.processes[0]
        first.terminate()
        await asyncio.wait_for(first.wait(), 30)
        # Calls go on against the one left.
        result = await mesh.calls("client-0", target("greeter-v1"), 20)
        assert result["answers"] == {"v1-1": 20}, result

        stop.touch()
        out, err = await asyncio.wait_for(client.communicate(), 60)
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert not summary["failures"], (summary, err.decode()[-2000:])
        assert set(summary["answers"]) == {"v1-0", "v1-1"}, summary
        assert_no_nack(mesh)


async def test_a_root_rotation_completes_without_a_failed_call(tmp_path: Path) -> None:
    """Every pod's files are rewritten by `bootstrap --proxyless --refresh` and re-read by
    gRPC; the controller holds each phase a few seconds while proxyless nodes are
    connected. Afterwards a server and a client bootstrapped with the new root only talk
    to the ones started before it: both sides took the new certificates and trust."""
    async with running_mesh(tmp_path, "--proxyless-dwell", "4") as mesh:
        mesh.bootstrap_args = ("--watch-interval", "0.5")
        await mesh.server("greeter-v1-0", "v1-0")
        stop = tmp_path / "stop-calls"
        client = await mesh.client_loop("client-0", target("greeter-v1"), stop)
        assert client.stdout is not None
        assert json.loads(await asyncio.wait_for(client.stdout.readline(), 60)) == {"seen": "v1-0"}
        for pod_name in ("greeter-v1-0", "client-0"):
            await mesh.refresher(pod_name, 0.5)
        state_file = mesh.state / "ca-state.json"
        old_root = json.loads(state_file.read_text())["active"]

        rotated = await asyncio.create_subprocess_exec(
            *MESHCP, "ca", "rotate", "--state-dir", str(mesh.state), "--server", f"127.0.0.1:{mesh.debug}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(rotated.communicate(), 60)
        assert rotated.returncode == 0, err.decode()

        async def finished() -> bool:
            found = json.loads(state_file.read_text())
            return bool(found["phase"] == "stable" and found["active"] != old_root)

        await eventually(finished, 120, "the root rotation to finish", details=state_file.read_text)

        # A server bootstrapped now trusts and presents the new root only: the running
        # client reaches it with its rewritten files.
        added = {"greeter-v1-1": (ADDRESSES["greeter-v1-1"], "v1")}
        mesh.write("servers.yaml", servers_manifest(mesh.ports, added))
        await mesh.server("greeter-v1-1", "v1-1")
        seen = json.loads(await asyncio.wait_for(client.stdout.readline(), 60))
        assert seen == {"seen": "v1-1"}
        # A client bootstrapped now reaches the server started before the rotation.
        result = await mesh.calls("client-0", target("greeter-v1"), 20)
        assert set(result["answers"]) == {"v1-0", "v1-1"}, result
        assert not result["failures"], result

        stop.touch()
        out, err = await asyncio.wait_for(client.communicate(), 60)
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert not summary["failures"], (summary, err.decode()[-2000:])
        assert_no_nack(mesh)


def _client_eds(mesh: Mesh) -> dict[str, object]:
    """What /debug/proxies says of client-0's endpoints: versions sent, ACKed, current."""
    for proxy in mesh.proxies():
        if proxy["metadata"].get("pod") == "client-0" and str(proxy["class"]).startswith("grpc:"):
            found: dict[str, object] = proxy["types"].get("eds", {})
            return found
    return {}
