"""Two controller replicas against the real API server (`meshcp serve --source kubernetes
--leader-lease meshcp-system/meshcp-controller`, each with the controller's ServiceAccount
token and deploy/'s generated RBAC): both serve xDS, exactly one leads; the leader
SIGKILLed, the other takes the Lease over within its duration; a proxy that moves from the
killed replica to the other is served the same configuration (the same versions and the
same resources, byte for byte: both compile the same objects into content-hashed versions);
a leader stopped cleanly releases the Lease.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpclib.client
import grpclib.const
import pytest
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshcp.cache import resource_types
from meshcp.certs import pem
from meshcp.kube.client import default_api_client
from meshcp.sources.kubernetes_lease import LeaderElection, LeaseSettings
from meshcp.sources.kubernetes_rbac import LEASE, NAMESPACE
from meshcp.xds.service import SOTW_PATH
from tests.kube.conftest import Installed
from tests.kube.meshcp_process import CA_SECRET, MeshcpProcess, controller
from tests.kube.test_source import node_id, start_pod, web_objects
from tests.support import eventually
from tests.support.kube import ApiServer
from tests.support.mtls import AdsSecrets, trusted_ca_of

STREAM = grpclib.const.Cardinality.STREAM_STREAM
WEB = "ha-web"
#: The production default (`--lease-duration`), as deploy/ would run it.
LEASE_DURATION = 15.0
#: Per type: the version, and each resource's name -> SHA-256 of its bytes.
Configuration = dict[str, tuple[str, dict[str, str]]]


async def get_json(port: int, path: str) -> Any:
    timeout = aiohttp.ClientTimeout(total=5)
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as reply:
        assert reply.status == 200, await reply.text()
        return await reply.json()


async def leading(replica: MeshcpProcess) -> bool:
    status = await get_json(replica.debug_port, "/debug/leader")
    return bool(status["leader"])


async def the_leader(replicas: list[MeshcpProcess]) -> MeshcpProcess:
    """The one replica that leads, once exactly one does."""

    async def one_leader() -> bool:
        return sum([await leading(r) for r in replicas]) == 1

    await eventually(one_leader, timeout=30, what="exactly one leader", details=lambda: replicas[0].log)
    (leader,) = [r for r in replicas if await leading(r)]
    return leader


async def leader_gauge(replica: MeshcpProcess) -> float:
    timeout = aiohttp.ClientTimeout(total=5)
    url = f"http://127.0.0.1:{replica.http_port}/metrics"
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as reply:
        text = await reply.text()
    (line,) = [line for line in text.splitlines() if line.startswith("meshcp_leader ")]
    return float(line.split()[1])


async def configuration(port: int, node: str) -> Configuration:
    """What a new SotW ADS stream from `node` is served first: clusters, then listeners
    (each ACKed, as Envoy would)."""
    channel = grpclib.client.Channel("127.0.0.1", port)
    got: Configuration = {}
    try:
        async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
            for type_url in (resource_types.CLUSTER, resource_types.LISTENER):
                request = DiscoveryRequest(node=Node(id=node, cluster="ha"), type_url=type_url)
                await stream.send_message(request)
                while True:
                    response = await asyncio.wait_for(stream.recv_message(), 30)
                    assert response is not None, "the server ended the stream"
                    if response.type_url == type_url:
                        break
                resources = {
                    getattr(item.unpack(), "name", ""): hashlib.sha256(item.value).hexdigest()
                    for item in response.resources
                }
                got[type_url] = (response.version_info, resources)
                await stream.send_message(
                    DiscoveryRequest(
                        type_url=type_url, version_info=response.version_info, response_nonce=response.nonce
                    )
                )
            await stream.end()
    finally:
        channel.close()
    return got


def lease(kube: ApiServer, name: str = LEASE) -> dict[str, Any]:
    found: dict[str, Any] = kube.get("lease", name, "-n", NAMESPACE)
    return found


@pytest.fixture
async def replicas(installed: Installed, tmp_path: Path) -> AsyncIterator[list[MeshcpProcess]]:
    """Two controllers, started together, with the controller's token; the Lease deleted
    before and after (other tests run single controllers without election)."""
    kube = installed.api
    kube.kubectl("delete", "lease", LEASE, "-n", NAMESPACE, "--ignore-not-found")
    kubeconfig = kube.kubeconfig_for("meshcp-system", "meshcp-controller")
    args = (f"--leader-lease={NAMESPACE}/{LEASE}", f"--lease-duration={LEASE_DURATION:g}")
    async with AsyncExitStack() as stack:
        started = await asyncio.gather(
            stack.enter_async_context(controller(kubeconfig, tmp_path / "a", *args)),
            stack.enter_async_context(controller(kubeconfig, tmp_path / "b", *args)),
        )
        yield list(started)
    kube.kubectl("delete", "lease", LEASE, "-n", NAMESPACE, "--ignore-not-found")


async def test_one_leader_and_a_takeover_within_the_lease_duration(
    installed: Installed, replicas: list[MeshcpProcess]
) -> None:
    kube = installed.api
    kube.apply(web_objects(WEB))
    pod = start_pod(kube, WEB, "web-0", "10.9.0.1")
    node = node_id(pod)

    leader = await the_leader(replicas)
    (follower,) = [r for r in replicas if r is not leader]
    assert [await leader_gauge(leader), await leader_gauge(follower)] == [1.0, 0.0]
    held = lease(kube)
    assert held["spec"]["holderIdentity"] == (await get_json(leader.debug_port, "/debug/leader"))["identity"]
    assert held["spec"]["leaseDurationSeconds"] == LEASE_DURATION

    # Both serve xDS; the same objects compile to the same configuration on each.
    async def served_alike() -> bool:
        on_leader = await configuration(leader.xds_port, node)
        on_follower = await configuration(follower.xds_port, node)
        return on_leader == on_follower and any(on_leader[resource_types.CLUSTER][1])

    await eventually(served_alike, timeout=30, what="the same configuration on both replicas")
    before = await configuration(leader.xds_port, node)
    # Only one Secret holds the CA: both replicas loaded the root the first one created.
    ca = kube.get("secret", "meshcp-ca", "-n", NAMESPACE)
    assert ca["data"], "the CA Secret is empty"

    # The leader dies without a word; the follower takes the Lease over once it has seen no
    # renewal for the lease duration (it was renewed at most one renewal period before).
    await leader.kill()
    killed_at = time.monotonic()

    async def took_over() -> bool:
        return await leading(follower)

    what = "the follower to take the Lease"
    await eventually(took_over, timeout=LEASE_DURATION + 5, what=what, details=lambda: follower.log)
    takeover = time.monotonic() - killed_at
    held_now = lease(kube)
    assert held_now["spec"]["holderIdentity"] != held["spec"]["holderIdentity"]
    assert held_now["spec"]["leaseTransitions"] == held["spec"].get("leaseTransitions", 0) + 1
    assert await leader_gauge(follower) == 1.0
    assert "leading: holding Lease" in follower.log
    print(f"takeover {takeover:.1f} s after SIGKILL (lease duration {LEASE_DURATION:g} s)")

    # The proxy reconnects to the replica left: the same versions, the same resources.
    assert await configuration(follower.xds_port, node) == before

    # A clean shutdown hands the Lease back (no one waits out its duration).
    await follower.stop()
    assert lease(kube)["spec"].get("holderIdentity", "") == "", lease(kube)
    assert "released" in follower.final_log, follower.final_log


class StaleRead:
    """The API, except that reads of the Lease answer `stale`: a replica whose read came
    just before another replica's write (the race resourceVersion checks are for)."""

    def __init__(self, api: CoordinationV1Api, stale: Any) -> None:
        self._api = api
        self._stale = stale

    async def read_namespaced_lease(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self._stale

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


async def test_lease_updates_are_resource_version_checked(installed: Installed) -> None:
    """Two elections in this process on their own Lease, with a clock the test moves: the
    first creates and holds it, then renews no more; it stops counting itself leader after
    its renew deadline, before the second, which follows until it has seen no renewal for
    the lease duration, takes the Lease over; the first's renewal from what it read before
    that (a stale resourceVersion) gets 409 Conflict from the API server, so the two never
    lead at once."""
    kube = installed.api
    name = "ha-probe"
    kube.kubectl("delete", "lease", name, "-n", NAMESPACE, "--ignore-not-found")
    now = [0.0]

    def clock() -> float:
        return now[0]

    def election(identity: str) -> LeaderElection:
        return LeaderElection(_no_factory, LeaseSettings(NAMESPACE, name, identity), monotonic=clock)

    first, second = election("first"), election("second")
    async with await default_api_client(config_file=str(kube.admin_kubeconfig)) as client:
        api = CoordinationV1Api(client)
        try:
            await first.attempt(api)
            assert first.leading
            await second.attempt(api)
            assert not second.leading and second.holder == "first"
            read_by_first = await api.read_namespaced_lease(name, NAMESPACE)

            # The first is cut off (it renews no more). Past its renew deadline it no longer
            # counts itself leader, before the Lease has expired for the second: a gap with
            # no leader, never an overlap.
            now[0] += 10.5
            assert not first.leading
            await second.attempt(api)
            assert not second.leading
            now[0] += LEASE_DURATION - 10
            await second.attempt(api)
            assert second.leading

            # The first's renewal from a read made before the takeover: the API refuses it
            # (409, stale resourceVersion); the Lease stays the second's.
            await first.attempt(cast(CoordinationV1Api, StaleRead(api, read_by_first)))
            assert not first.leading
            assert lease(kube, name)["spec"]["holderIdentity"] == "second"
            await first.attempt(api)
            assert not first.leading and first.holder == "second"
        finally:
            kube.kubectl("delete", "lease", name, "-n", NAMESPACE, "--ignore-not-found")


async def _no_factory() -> ApiClient:
    raise AssertionError("the test hands attempt() its client")


async def trusted_roots(replica: MeshcpProcess, node: str) -> list[str]:
    """The mesh trust bundle a new proxy of `node` is served by `replica` (SDS), as root
    fingerprints."""
    channel = grpclib.client.Channel("127.0.0.1", replica.xds_port)
    try:
        async with AdsSecrets.open(channel, delta=False) as sds:
            await sds.subscribe(node, ["service-cert", "root-cert"])
            secrets = await asyncio.wait_for(sds.receive(), 30)
    finally:
        channel.close()
    bundle = trusted_ca_of(secrets["root-cert"])
    return [pem.fingerprint_sha256(c) for c in pem.load_certificates(bundle)]


async def test_only_the_leader_moves_a_root_rotation_and_the_follower_follows(
    installed: Installed, replicas: list[MeshcpProcess]
) -> None:
    """A root rotation started in the CA Secret (`meshcp ca rotate --ca-secret`, as an
    operator would) is carried out by the leader alone; the follower follows it from the
    Secret, and both end up serving the same trust bundle with the new root only."""
    kube = installed.api
    kube.apply(web_objects(WEB))
    pod = start_pod(kube, WEB, "web-rotate", "10.9.0.2")
    node = node_id(pod)

    leader = await the_leader(replicas)
    (follower,) = [r for r in replicas if r is not leader]
    old = await trusted_roots(leader, node)
    assert len(old) == 1 and await trusted_roots(follower, node) == old

    rotate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "meshcp", "ca", "rotate", f"--ca-secret={CA_SECRET}",
         f"--kubeconfig={kube.admin_kubeconfig}", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert rotate.returncode == 0, rotate.stdout + rotate.stderr
    new = json.loads(rotate.stdout)["root"]["sha256_fingerprint"]
    assert new not in old

    async def finished() -> bool:
        phases = [(await get_json(r.debug_port, "/debug/trust"))["phase"] for r in replicas]
        served = [await trusted_roots(r, node) for r in replicas]
        return phases == ["stable", "stable"] and served == [[new], [new]]

    await eventually(finished, timeout=60, what="the rotation finished on both", details=lambda: leader.log)
    assert "root rotation finished" in leader.log
    for step in ("root rotation: signing with the new root", "root rotation finished"):
        assert step not in follower.log, follower.log
