"""Root rotation driven by proxies' ACKs (`TrustCoordinator.step`), against an in-process
controller with a real InternalCA and ADS clients (SotW and delta) over loopback gRPC.

The controller is started without its background tasks except the publisher, so each
`step()` is one deliberate tick of the rotation state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpclib.client
import pytest
from cryptography import x509

from meshcp.cache import resource_types
from meshcp.certs import (
    CertificateProvider,
    Identity,
    InternalCA,
    IssuedCertificate,
    MemoryStore,
    ProxyIdentity,
)
from meshcp.certs import pem as pem_util
from meshcp.certs.cli_support import ca_show
from meshcp.certs.issuance import xds_client_request
from meshcp.certs.root_rotation import Phase
from meshcp.certs.setup import CaSettings
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.settings import Address, Settings
from tests.certs.support import CountingProvider, FakeClock
from tests.support import eventually
from tests.support.mtls import (
    XDS_SERVER_NAME,
    AdsSecrets,
    PemFiles,
    chain_of,
    client_context,
    new_proxy,
    trusted_ca_of,
    write_pem,
)

SDS = resource_types.SECRET
BUYER = Identity("bookbuyer", "bookbuyer")


def settings(ca: CaSettings | None = None, *, mtls: bool = False) -> Settings:
    return Settings(
        xds_address=Address("127.0.0.1", 0),
        http_address=Address("127.0.0.1", 0),
        ca=ca or CaSettings(),
        insecure_xds=not mtls,
    )


@asynccontextmanager
async def controller(
    ca: CaSettings | None = None, *, mtls: bool = False, provider: CertificateProvider | None = None
) -> AsyncIterator[ControllerRuntime]:
    """A started controller (plaintext xDS unless `mtls`) whose publisher runs; trust is
    stepped by hand."""
    if provider is None:
        runtime = await ControllerRuntime.open(settings(ca, mtls=mtls))
    else:
        runtime = ControllerRuntime(settings(ca, mtls=mtls), provider)
    await runtime.start()
    publisher = asyncio.create_task(runtime.publisher.run())
    try:
        yield runtime
    finally:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        await runtime.close()


def internal(runtime: ControllerRuntime) -> InternalCA:
    assert isinstance(runtime.provider, InternalCA)
    return runtime.provider


def secret_names(proxy: ProxyIdentity) -> list[str]:
    return [
        f"service-cert:{proxy.identity}",
        f"root-cert-for-mtls-inbound:{proxy.identity}",
        "root-cert-for-mtls-outbound:bookbuyer/bookbuyer",
    ]


async def register(runtime: ControllerRuntime, proxy: ProxyIdentity) -> None:
    runtime.publisher.update(
        [ProxyClass(proxy.name, proxy.identity, upstreams={("bookbuyer", "bookbuyer"): (BUYER,)})]
    )

    async def published() -> bool:
        return runtime.cache.get(proxy.name) is not None

    await eventually(published, 5, "the proxy's class to be published")


async def settled(runtime: ControllerRuntime) -> None:
    """Until no connected proxy lags behind its secrets (the server has processed the ACK)."""

    async def none_lagging() -> bool:
        return runtime.proxies.lagging(SDS, runtime.cache.get) == []

    await eventually(none_lagging, 5, "every proxy to ACK its secrets")


def roots_in(bundle: str) -> list[str]:
    return [pem_util.fingerprint_sha256(cert) for cert in pem_util.load_certificates(bundle)]


def phase(ca: InternalCA) -> Phase:
    return ca.state.phase


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
    service_cert, root_in, root_out = names
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
                assert set(pushed) == {root_in, root_out}  # the certificate is not re-sent
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
                assert set(pushed) == {root_in, root_out}
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
        inbound = snapshot.resources(SDS)[f"root-cert-for-mtls-inbound:{proxy.identity}"]
        assert inbound.body.count(b"BEGIN CERTIFICATE") == 1


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


# The xDS listener's certificate and trust through a rotation ----------------------


def served(runtime: ControllerRuntime) -> list[x509.Certificate]:
    """The chain the xDS listener presents now: leaf, then cross certificates."""
    certificate = runtime.trust.server_certificate
    assert certificate is not None
    return pem_util.load_certificates(certificate.chain_pem)


async def xds_files(runtime: ControllerRuntime, directory: Path, proxy: ProxyIdentity) -> PemFiles:
    """A bootstrap written now: xDS client certificate and the CA's current roots."""
    issued = await runtime.issuer.issue(xds_client_request(proxy))
    return write_pem(directory, proxy.proxy_uuid, issued, await runtime.provider.trust_bundle())


async def handshake(runtime: ControllerRuntime, files: PemFiles) -> None:
    """A TLS handshake with the xDS listener as "localhost", verifying its chain against
    `files.ca` (ssl.SSLCertVerificationError if it does not verify)."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", runtime.xds.port, ssl=client_context(files), server_hostname=XDS_SERVER_NAME
    )
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def test_the_xds_server_certificate_follows_each_phase_on_the_same_listener(tmp_path: Path) -> None:
    proxy = new_proxy("bookstore", "bookstore")
    async with controller(mtls=True) as runtime:
        ca = internal(runtime)
        listener = runtime.xds_tls
        old = ca.state.active
        (leaf,) = served(runtime)
        assert leaf.issuer == old.certificate.subject
        before = await xds_files(runtime, tmp_path / "before", proxy)  # trusts the old root only
        await handshake(runtime, before)

        await runtime.trust.rotate()  # TRUSTING: the old root still signs
        new = ca.state.active
        (leaf,) = served(runtime)
        assert leaf.issuer == old.certificate.subject
        during = await xds_files(runtime, tmp_path / "during", proxy)  # trusts both
        for files in (before, during):
            await handshake(runtime, files)

        await runtime.trust.step()  # ROTATING: re-issued from the new root, with the cross certificate
        assert phase(ca) is Phase.ROTATING
        rotating = served(runtime)
        leaf, cross = rotating
        assert leaf.issuer == new.certificate.subject == cross.subject
        assert cross.issuer == old.certificate.subject
        for files in (before, during):
            await handshake(runtime, files)

        await runtime.trust.step()  # workload certificates re-issued
        await runtime.trust.step()  # finished: the old root is retired, nothing to re-issue
        assert phase(ca) is Phase.STABLE
        assert served(runtime) == rotating
        assert roots_in(runtime.trust.bundle) == roots_in(new.pem)
        assert roots_in(runtime.trust.xds_bundle) == roots_in(new.pem + old.pem)
        after = await xds_files(runtime, tmp_path / "after", proxy)  # trusts the new root only
        assert roots_in(after.ca.read_text()) == roots_in(new.pem)
        for files in (before, during, after):
            await handshake(runtime, files)
        assert runtime.xds_tls is listener  # never replaced: the listener kept running


async def test_a_retired_root_leaves_the_xds_bundle_when_it_expires() -> None:
    clock = FakeClock(datetime.now(UTC))
    store = MemoryStore()
    await InternalCA.open(store, clock=clock, root_validity=timedelta(days=10))  # the old root
    ca = await InternalCA.open(store, clock=clock, root_validity=timedelta(days=100))
    async with controller(mtls=True, provider=ca) as runtime:
        old = ca.state.active
        await runtime.trust.rotate()
        for _ in range(3):  # no proxy connected: sign with the new root, re-issue, finish
            await runtime.trust.step()
        assert phase(ca) is Phase.STABLE and ca.state.retired == (old.certificate,)
        assert len(served(runtime)) == 2

        clock.now = old.certificate.not_valid_after_utc + timedelta(seconds=1)
        await runtime.trust.step()
        assert roots_in(runtime.trust.xds_bundle) == roots_in(ca.state.active.pem)
        (leaf,) = served(runtime)  # re-issued, the cross certificate leads nowhere now
        assert leaf.issuer == ca.state.active.certificate.subject


async def test_with_another_provider_the_xds_bundle_is_the_trust_bundle(tmp_path: Path) -> None:
    """Retired roots and cross certificates are the internal CA's; any other provider's
    trust bundle is the xDS bundle too, and the server certificate follows its changes."""
    inner = await InternalCA.open(MemoryStore())
    async with controller(mtls=True, provider=CountingProvider(inner)) as runtime:
        assert runtime.trust.xds_bundle == runtime.trust.bundle == inner.state.active.pem
        first = runtime.trust.server_certificate
        await inner.rotate_root()
        await inner.sign_with_new_root()
        await runtime.trust.refresh()
        assert runtime.trust.xds_bundle == runtime.trust.bundle == await inner.trust_bundle()
        assert runtime.trust.server_certificate is not first
        (leaf,) = served(runtime)  # no cross certificates from a provider that has none
        assert leaf.issuer == inner.state.active.certificate.subject
        files = await xds_files(runtime, tmp_path, new_proxy("bookstore", "bookstore"))
        await handshake(runtime, files)
