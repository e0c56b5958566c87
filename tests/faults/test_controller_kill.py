"""Fault injection: `meshcp serve` SIGKILLed (no shutdown of any kind) and started again on
the same state directory and ports.

- During a root rotation, held in its "trusting" or its "rotating" phase by a proxy that
  has not ACKed yet: the restarted controller resumes the rotation from the phase the CA
  committed and finishes it, and at every moment every proxy holds a certificate that is
  valid and that every other proxy's bundle trusts.
- During the cold start of `FLEET` simulated proxies: every one reconnects (with back-off,
  presenting what it holds) and converges on the restarted controller, whose admission
  (`--admission`) bounds how many are served their first configuration at once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshcp.certs.root_rotation import Phase
from meshcp.cli.offline import load
from meshcp.identity import Identity, ProxyIdentity
from meshcp.model.core import Pod
from meshcp.policy.membership import proxy_uuid
from tests.faults.figures import Stopwatch, record
from tests.faults.fleet import Fleet, write_mesh
from tests.faults.sds_proxy import SdsProxy, signed_by_one_of
from tests.faults.serve_process import ServeProcess
from tests.faults.test_controller_parts import EXAMPLE, meshcp
from tests.support import eventually

#: The simulated proxies of the cold start: services x pods.
SERVICES, PODS = 20, 50
FLEET = SERVICES * PODS


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    process = ServeProcess(EXAMPLE, tmp_path / "state", tmp_path / "serve.log")
    try:
        yield process
    finally:
        await process.stop()


async def bookstore_nodes() -> list[str]:
    state = await load(EXAMPLE)
    pods = [obj for obj in state.objects.values() if isinstance(obj, Pod)]
    return sorted(
        ProxyIdentity(proxy_uuid(pod), Identity(pod.meta.namespace, pod.service_account)).name for pod in pods
    )


def phase(state_dir: Path) -> Phase:
    return Phase(json.loads((state_dir / "ca-state.json").read_text())["phase"])


def trust_each_other(proxies: list[SdsProxy]) -> list[str]:
    """What is wrong with what the proxies hold: a certificate not valid now or not
    trusted by some proxy's bundle (an empty list: every pair can talk mTLS)."""
    wrong = []
    for proxy in proxies:
        leaf = proxy.certificate()
        if not proxy.usable() or leaf is None:
            wrong.append(f"{proxy.node_id}: no usable certificate")
            continue
        wrong += [
            f"{other.node_id} does not trust {proxy.node_id}"
            for other in proxies
            if not signed_by_one_of(leaf, other.roots())
        ]
    return wrong


@pytest.mark.parametrize("killed_in", [Phase.TRUSTING, Phase.ROTATING])
async def test_sigkill_during_a_root_rotation(serve: ServeProcess, killed_in: Phase) -> None:
    await serve.start()
    await serve.wait_ready()
    nodes = await bookstore_nodes()
    proxies = [SdsProxy(serve.xds_port, node) for node in nodes]
    laggard = proxies[0]
    checked: list[str] = []
    async with contextlib.AsyncExitStack() as running:
        for proxy in proxies:
            await running.enter_async_context(proxy)

        async def all_usable() -> bool:
            return all(proxy.usable() for proxy in proxies)

        await eventually(all_usable, 30, "every proxy's certificate", serve.log_tail)
        old_root = laggard.roots()[0]
        # The laggard holds its ACK from the phase the controller is killed in: the trust
        # bundle of both roots (trusting), or its certificate from the new root (rotating).
        if killed_in == Phase.TRUSTING:
            laggard.auto_ack = False
        status, stderr = await meshcp("ca", "rotate", "--state-dir", str(serve.state_dir))
        assert status == 0, stderr

        async def held_in_phase() -> bool:
            if killed_in == Phase.ROTATING:
                leaf = laggard.certificate()
                laggard.auto_ack = leaf is None or leaf.issuer == old_root.subject
            return phase(serve.state_dir) == killed_in and len(laggard.roots()) == 2

        await eventually(held_in_phase, 30, f"the rotation to wait in {killed_in}", serve.log_tail)
        checked += trust_each_other(proxies)
        await serve.kill()
        checked += trust_each_other(proxies)  # what they hold with no controller at all
        assert phase(serve.state_dir) == killed_in

        laggard.auto_ack = True
        clock = Stopwatch()
        await serve.start()

        async def finished() -> bool:
            checked.extend(trust_each_other(proxies))
            roots = {tuple(proxy.roots()) for proxy in proxies}
            return phase(serve.state_dir) == Phase.STABLE and len(roots) == 1 and len(next(iter(roots))) == 1

        await eventually(finished, 60, "the rotation to finish after the restart", serve.log_tail)
        record(
            f"SIGKILL during a root rotation ({killed_in})", "rotation finished after the restart", clock()
        )
        new_root = laggard.roots()[0]
        assert new_root != old_root
        assert all(proxy.certificate() is not None for proxy in proxies)
        assert checked == []  # no proxy was ever left without a certificate its peers trust


async def test_sigkill_during_a_cold_start(tmp_path: Path) -> None:
    nodes = write_mesh(tmp_path / "mesh", SERVICES, PODS)
    serve = ServeProcess(tmp_path / "mesh", tmp_path / "state", tmp_path / "serve.log", "--admission", "256")
    try:
        async with Fleet(serve.xds_port, nodes) as fleet:
            await serve.start()  # the proxies are already trying to connect

            async def converging() -> bool:
                return fleet.converged() > 0

            await eventually(converging, 60, "the first proxy to converge", serve.log_tail)
            before = fleet.converged()
            await serve.kill()
            record(
                f"SIGKILL during a cold start of {FLEET} proxies", "proxies converged when killed", before, ""
            )
            fleet.restarted()
            clock = Stopwatch()
            await serve.start()

            async def all_converged() -> bool:
                return fleet.converged() == FLEET

            await eventually(
                all_converged,
                90,
                f"all {FLEET} proxies to converge",
                lambda: f"{fleet.converged()}\n{serve.log_tail()}",
            )
            record(
                f"SIGKILL during a cold start of {FLEET} proxies", "all converged after the restart", clock()
            )
            record(
                f"SIGKILL during a cold start of {FLEET} proxies",
                "peak RSS of the restarted controller",
                serve.peak_rss_mb(),
                "MB",
            )
            assert before < FLEET  # killed during the cold start, not after it
            # The server's view agrees: every proxy connected, every type ACKed as sent.
            status, proxies = await serve.get("/debug/proxies", debug=True)
            assert status == 200
            assert {entry["node_id"] for entry in proxies} == {node for node, _ in nodes}
            for entry in proxies:
                for short in ("cds", "lds", "sds"):
                    sent = entry["types"][short]
                    assert sent["version_acked"] == sent["version_sent"] != "", (
                        entry["node_id"],
                        short,
                        sent,
                    )
    finally:
        await serve.stop()
