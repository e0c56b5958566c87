"""Root rotation driven by proxies' ACKs (`TrustCoordinator.step`), against an in-process
controller with a real InternalCA and ADS clients (SotW and delta) over loopback gRPC.

The controller (`tests.runtime.stepped_controller`) is started without its background
tasks except the publisher, so each `step()` is one deliberate tick of the rotation state
machine. The xDS listener's own certificate and trust: tests/runtime/test_trust_xds.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpclib.client
import pytest

from meshcp.cache import resource_types
from meshcp.certs import InternalCA, IssuedCertificate, ProxyIdentity
from meshcp.certs import pem as pem_util
from meshcp.certs.cli_support import ca_show
from meshcp.certs.root_rotation import Phase
from meshcp.certs.setup import CaSettings
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from tests.runtime.stepped_controller import controller, internal, phase, roots_in
from tests.support import eventually
from tests.support.mtls import AdsSecrets, chain_of, new_proxy, trusted_ca_of

SDS = resource_types.SECRET


def secret_names(proxy: ProxyIdentity) -> list[str]:
    """The proxy's own certificate and the mesh's trust bundle: the same two names for
    every proxy."""
    return ["service-cert", "root-cert"]


async def register(runtime: ControllerRuntime, proxy: ProxyIdentity) -> None:
    runtime.publisher.update([ProxyClass(proxy.name, proxy.identity)])

    async def published() -> bool:
        return runtime.cache.get(proxy.name) is not None

    await eventually(published, 5, "the proxy's class to be published")


async def settled(runtime: ControllerRuntime) -> None:
    """Until no connected proxy lags behind its secrets (the server has processed the ACK)."""

    async def none_lagging() -> bool:
        return runtime.proxies.lagging(SDS, runtime.cache.get) == []

    await eventually(none_lagging, 5, "every proxy to ACK its secrets")


def fingerprint(ca: InternalCA, which: str) -> str:
    root = ca.state.active if which == "active" else ca.state.previous
    assert root is not None
    return pem_util.fingerprint_sha256(root.certificate)


def current(runtime: ControllerRuntime, proxy: ProxyIdentity) -> IssuedCertificate:
    certificate = runtime.certificates.current(proxy.identity)
    assert certificate is not None
    return certificate


@pytest.fixture(params=[False, True], ids=["sotw", "delta"])
def delta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_root_rotation_advances_only_when_every_proxy_has_acked(delta: bool) -> None:
    proxy = new_proxy("bookstore", "bookstore")
    names = secret_names(proxy)
    service_cert, root = names
    async with controller() as runtime:
        ca = internal(runtime)
        await register(runtime, proxy)
        old_root = fingerprint(ca, "active")
        channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
        try:
            async with AdsSecrets.open(channel, delta=delta) as sds:
                await sds.subscribe(proxy.name, names)
                assert set(await sds.receive()) == set(names)
                await sds.ack()
                await settled(runtime)
                old_cert = current(runtime, proxy)

                # 1. Rotation starts: the bundle holds both roots and is pushed at once;
                # the old root still signs.
                await runtime.trust.rotate()
                new_root = fingerprint(ca, "active")
                assert phase(ca) is Phase.TRUSTING and new_root != old_root
                assert ca.state.signing_root.certificate.subject == old_cert.certificate.issuer
                assert roots_in(runtime.trust.bundle) == [new_root, old_root]
                assert runtime.publisher.trust_bundle == runtime.trust.bundle
                pushed = await sds.receive()
                assert set(pushed) == {root}  # the certificate is not re-sent
                for secret in pushed.values():
                    assert roots_in(trusted_ca_of(secret)) == [new_root, old_root]

                # The proxy has not ACKed: stepping changes nothing.
                assert runtime.proxies.lagging(SDS, runtime.cache.get) == [proxy.name]
                for _ in range(3):
                    await runtime.trust.step()
                assert current(runtime, proxy) is old_cert
                assert phase(ca) is Phase.TRUSTING

                # 2. Once it ACKs, the new root signs; nothing is re-issued or pushed yet.
                await sds.ack()
                await settled(runtime)
                await runtime.trust.step()
                assert phase(ca) is Phase.ROTATING
                assert ca.state.signing_root.certificate.subject != old_cert.certificate.issuer
                assert current(runtime, proxy) is old_cert
                assert roots_in(runtime.trust.bundle) == [new_root, old_root]
                assert runtime.proxies.lagging(SDS, runtime.cache.get) == []  # nothing published

                # 3. Certificates are re-issued from the new root.
                await runtime.trust.step()
                new_cert = current(runtime, proxy)
                assert new_cert.serial_number != old_cert.serial_number
                assert new_cert.certificate.issuer == ca.state.active.certificate.subject
                assert old_cert.certificate.issuer != new_cert.certificate.issuer
                pushed = await sds.receive()
                assert set(pushed) == {service_cert}
                assert chain_of(pushed[service_cert]) == new_cert.chain_pem

                # Not ACKed yet: the old root stays trusted.
                await runtime.trust.step()
                assert phase(ca) is Phase.ROTATING
                assert len(roots_in(runtime.trust.bundle)) == 2

                # 4. ACKed: the old root is dropped and the one-root bundle pushed.
                await sds.ack()
                await settled(runtime)
                await runtime.trust.step()
                assert phase(ca) is Phase.STABLE and ca.state.previous is None
                assert roots_in(runtime.trust.bundle) == [new_root]
                pushed = await sds.receive()
                assert set(pushed) == {root}
                for secret in pushed.values():
                    assert roots_in(trusted_ca_of(secret)) == [new_root]
                await sds.ack()
                await settled(runtime)
                await runtime.trust.step()  # nothing more to do
                assert current(runtime, proxy) is new_cert
                assert phase(ca) is Phase.STABLE
        finally:
            channel.close()


async def test_a_rotation_started_by_another_process_is_picked_up(tmp_path: Path) -> None:
    """`meshcp ca rotate` on the live controller's state directory, as a separate process."""
    state_dir = tmp_path / "ca"
    proxy = new_proxy("bookstore", "bookstore")
    names = secret_names(proxy)
    async with controller(CaSettings(state_dir=state_dir)) as runtime:
        ca = internal(runtime)
        await register(runtime, proxy)
        old_root, old_id = fingerprint(ca, "active"), ca.state.active.id
        channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
        try:
            async with AdsSecrets.open(channel, delta=False) as sds:
                await sds.subscribe(proxy.name, names)
                await sds.receive()
                await sds.ack()
                await settled(runtime)
                old_cert = current(runtime, proxy)

                rotate = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "meshcp", "ca", "rotate", "--state-dir", str(state_dir),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                output, _ = await rotate.communicate()
                assert rotate.returncode == 0, output.decode()
                assert (await ca_show(state_dir))["phase"] == "trusting"
                assert phase(ca) is Phase.STABLE  # not seen until the next tick

                await runtime.trust.step()
                assert phase(ca) is Phase.TRUSTING  # the proxy has not ACKed the new bundle yet
                assert ca.state.signing_root.id == old_id
                new_root = fingerprint(ca, "active")
                assert roots_in(runtime.trust.bundle) == [new_root, old_root]
                pushed = await sds.receive()
                assert roots_in(trusted_ca_of(pushed[names[1]])) == [new_root, old_root]
                await sds.ack()
                await settled(runtime)

                await runtime.trust.step()
                assert phase(ca) is Phase.ROTATING
                assert (await ca_show(state_dir))["phase"] == "rotating"
                assert current(runtime, proxy) is old_cert

                await runtime.trust.step()
                new_cert = current(runtime, proxy)
                assert new_cert.certificate.issuer == ca.state.active.certificate.subject
                assert new_cert.serial_number != old_cert.serial_number
                assert chain_of((await sds.receive())[names[0]]) == new_cert.chain_pem
                await sds.ack()
                await settled(runtime)

                await runtime.trust.step()
                assert phase(ca) is Phase.STABLE
                assert roots_in(runtime.trust.bundle) == [new_root]
        finally:
            channel.close()
    shown = await ca_show(state_dir)
    assert shown["phase"] == "stable" and shown["previous_root"] is None
    assert shown["root"]["sha256_fingerprint"] == new_root
    assert not (state_dir / f"root-{old_id}.key").exists()


@pytest.mark.parametrize("interrupted_in", [Phase.TRUSTING, Phase.ROTATING], ids=str)
async def test_a_rotation_interrupted_by_a_restart_resumes(tmp_path: Path, interrupted_in: Phase) -> None:
    state_dir = tmp_path / "ca"
    proxy = new_proxy("bookstore", "bookstore")
    async with controller(CaSettings(state_dir=state_dir)) as first:
        await register(first, proxy)
        old_root = fingerprint(internal(first), "active")
        await first.trust.rotate()
        new_root = fingerprint(internal(first), "active")
        if interrupted_in is Phase.ROTATING:
            await first.trust.step()  # no proxy connected, none lags: sign with the new root
        assert phase(internal(first)) is interrupted_in

    async with controller(CaSettings(state_dir=state_dir)) as second:
        ca = internal(second)
        assert phase(ca) is interrupted_in
        assert roots_in(second.trust.bundle) == [new_root, old_root]
        await register(second, proxy)
        first_issued = current(second, proxy)
        signer = old_root if interrupted_in is Phase.TRUSTING else new_root
        assert pem_util.fingerprint_sha256(ca.state.signing_root.certificate) == signer
        assert first_issued.certificate.issuer == ca.state.signing_root.certificate.subject
        if interrupted_in is Phase.TRUSTING:
            await second.trust.step()  # no proxy connected, none lags: sign with the new root
            assert phase(ca) is Phase.ROTATING
            assert current(second, proxy) is first_issued
        await second.trust.step()  # re-issue (the restart forgot it may have been done)
        reissued = current(second, proxy)
        assert reissued is not first_issued
        assert reissued.certificate.issuer == ca.state.active.certificate.subject
        await second.trust.step()  # and finish
        assert phase(ca) is Phase.STABLE
        assert roots_in(second.trust.bundle) == [new_root]
        snapshot = second.cache.get(proxy.name)
        assert snapshot is not None
        root = snapshot.resources(SDS)["root-cert"]
        assert root.body.count(b"BEGIN CERTIFICATE") == 1


async def test_no_certificate_of_the_new_root_is_served_before_every_proxy_trusts_it() -> None:
    """The module's promise: nobody is handed a certificate its peers do not trust yet."""
    store = new_proxy("bookstore", "bookstore")
    buyer = new_proxy("bookbuyer", "bookbuyer")
    async with controller() as runtime:
        ca = internal(runtime)
        store_class = ProxyClass(store.name, store.identity)
        runtime.publisher.update([store_class])
        channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
        try:
            async with AdsSecrets.open(channel, delta=False) as sds:
                await sds.subscribe(store.name, secret_names(store)[:2])
                await sds.receive()
                await sds.ack()
                await settled(runtime)
                old_root = ca.state.active.certificate.subject

                await runtime.trust.rotate()
                await sds.receive()  # the bookstore got the two-root bundle but has not applied it
                assert runtime.proxies.lagging(SDS, runtime.cache.get) == [store.name]

                # A bookbuyer pod starts now (a routine renewal would do the same).
                runtime.publisher.update([store_class, ProxyClass(buyer.name, buyer.identity)])

                async def published() -> bool:
                    return runtime.cache.get(buyer.name) is not None

                await eventually(published, 5, "the bookbuyer's class")
                # The bookstore still trusts only the old root: the bookbuyer's certificate must
                # chain to it, or the bookstore refuses the bookbuyer's calls.
                assert current(runtime, buyer).certificate.issuer == old_root
        finally:
            channel.close()


async def test_a_proxy_that_never_acks_holds_a_rotation_back_only_until_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One proxy that keeps NACKing (here: always lagging) is named in a warning every
    minute and counted in `meshcp_ca_rotation_lagging_proxies`; after the deadline the
    rotation goes on without it rather than letting a root close to expiry run out."""
    async with controller(CaSettings()) as runtime:
        ca = internal(runtime)
        now = [0.0]
        trust = runtime.trust
        trust._lagging = lambda: ["stuck-proxy"]  # the fault
        trust._monotonic = lambda: now[0]
        await trust.rotate()
        with caplog.at_level("WARNING", logger="meshcp.runtime.trust"):
            await trust.step()
            assert phase(ca) is Phase.TRUSTING and trust.laggards == ("stuck-proxy",)
            assert b"meshcp_ca_rotation_lagging_proxies 1.0" in runtime.metrics.exposition()
            now[0] = 61.0
            await trust.step()
            assert phase(ca) is Phase.TRUSTING
            assert any("has waited 61 s for 1 proxies" in r.getMessage() for r in caplog.records)
            assert any("stuck-proxy" in r.getMessage() for r in caplog.records)
            now[0] = 901.0
            await trust.step()
        assert phase(ca) is Phase.ROTATING
        assert any("goes on after 901 s without 1 proxies" in r.getMessage() for r in caplog.records)


async def test_a_follower_follows_the_leaders_rotation_and_never_moves_it(tmp_path: Path) -> None:
    """Two replicas on one CA store (HA: the CA Secret); only the leader starts and moves a
    rotation. The follower's bundles follow each committed phase, it re-issues its own
    proxy's certificate once the new root signs, and its steps never change the phase."""
    state_dir = tmp_path / "ca"
    proxy = new_proxy("bookstore", "bookstore")
    async with (
        controller(CaSettings(state_dir=state_dir)) as leader,
        controller(CaSettings(state_dir=state_dir)) as follower,
    ):
        follower.trust.leading = lambda: False
        await register(follower, proxy)
        old_cert = current(follower, proxy)
        assert fingerprint(internal(follower), "active") == fingerprint(internal(leader), "active")

        await leader.trust.rotate()
        await follower.trust.step()
        assert phase(internal(follower)) is Phase.TRUSTING
        assert follower.trust.bundle == leader.trust.bundle
        await follower.trust.step()  # no proxy lags here: a leader would move on now
        assert (await ca_show(state_dir))["phase"] == "trusting"
        assert current(follower, proxy) is old_cert

        await leader.trust.step()
        assert phase(internal(leader)) is Phase.ROTATING
        await follower.trust.step()
        assert phase(internal(follower)) is Phase.ROTATING
        new_cert = current(follower, proxy)
        assert new_cert.certificate.issuer == internal(follower).state.active.certificate.subject
        assert new_cert.serial_number != old_cert.serial_number
        await follower.trust.step()
        assert (await ca_show(state_dir))["phase"] == "rotating"

        await leader.trust.step()  # the leader's own certificates (none here)
        await leader.trust.step()
        assert phase(internal(leader)) is Phase.STABLE
        await follower.trust.step()
        assert phase(internal(follower)) is Phase.STABLE
        assert follower.trust.bundle == leader.trust.bundle
        assert len(roots_in(follower.trust.bundle)) == 1


async def test_each_phase_lasts_the_proxyless_dwell_while_proxyless_nodes_are_connected() -> None:
    """Proxyless gRPC nodes ACK no secrets (they read files): a phase waits for nobody, but
    lasts `proxyless_dwell` seconds while some are connected, the time their files take to
    be rewritten and re-read; without them it does not wait."""
    async with controller(CaSettings()) as runtime:
        ca = internal(runtime)
        now = [0.0]
        trust = runtime.trust
        trust._monotonic = lambda: now[0]
        trust._proxyless = lambda: 1
        trust._proxyless_dwell = 30.0
        await trust.rotate()
        await trust.step()
        assert phase(ca) is Phase.TRUSTING
        now[0] = 29.0
        await trust.step()
        assert phase(ca) is Phase.TRUSTING
        now[0] = 30.0
        await trust.step()
        assert phase(ca) is Phase.ROTATING
        await trust.step()  # the rotating phase's own dwell starts
        now[0] = 60.0
        await trust.step()  # re-issues the workload certificates
        await trust.step()
        assert phase(ca) is Phase.STABLE
        trust._proxyless = lambda: 0
        await trust.rotate()
        await trust.step()
        assert phase(ca) is Phase.ROTATING  # no proxyless node: no dwell
