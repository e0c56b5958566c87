"""The publisher: a proxy class's snapshot is its config plus its identity's certificate
(`service-cert`) and the mesh's trust bundle (`root-cert`, shared by every class).

A real InternalCA (in memory) issues through `Issuer` and a `CertificateManager` made by
`workload_certificates`; `Publisher.run` runs in a task group where issuing is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import Secret
from meshcp._proto.google.protobuf import Any as AnyMessage
from meshcp.cache import Encoder, Snapshot, SnapshotCache, resource_types
from meshcp.certs import (
    CertificateError,
    CertificateProvider,
    CertificateRequest,
    Identity,
    InternalCA,
    IssuedCertificate,
    Issuer,
    MemoryStore,
    RenewalPolicy,
    workload_certificates,
)
from meshcp.certs import pem as pem_util
from meshcp.certs.clock import utc_now
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.publish import Publisher
from tests.certs.support import CountingProvider, FakeClock, wait_until
from tests.factories import cluster, listener
from tests.support import eventually

SDS = resource_types.SECRET
BUYER = Identity("bookbuyer", "bookbuyer")
STORE = Identity("bookstore", "bookstore")


class Mesh:
    """A publisher wired as the controller wires it, around any provider."""

    def __init__(
        self, provider: CertificateProvider, clock: FakeClock | None = None, **manager_options: Any
    ) -> None:
        self.provider = provider
        self.cache = SnapshotCache()
        self.encoder = Encoder()
        self.rotated: list[Identity] = []

        async def on_rotated(identity: Identity, certificate: IssuedCertificate) -> None:
            self.rotated.append(identity)
            await self.publisher.on_rotated(identity, certificate)

        self.certificates = workload_certificates(
            Issuer(provider), on_rotated=on_rotated, clock=clock or utc_now, **manager_options
        )
        self.publisher = Publisher(self.cache, self.encoder, self.certificates, retry_interval=0.01)

    async def set_bundle(self) -> str:
        bundle = await self.provider.trust_bundle()
        self.publisher.set_trust_bundle(bundle)
        return bundle

    def proxy_class(self, key: str, identity: Identity) -> ProxyClass:
        resources = (self.encoder.encode(cluster(f"{key}-cluster")), self.encoder.encode(listener(key, 8080)))
        return ProxyClass(key, identity, resources)

    async def published(self, *keys: str) -> None:
        async def all_there() -> bool:
            return all(self.cache.get(key) is not None for key in keys)

        await eventually(all_there, 5, f"snapshots of {', '.join(keys)}")


@asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[None]:
    """`publisher.run()` in a task group for the duration of the block."""
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(publisher.run())
        try:
            yield
        finally:
            task.cancel()


def secrets_of(snapshot: Snapshot) -> dict[str, Secret]:
    out = {}
    for name, resource in snapshot.resources(SDS).items():
        secret = AnyMessage.parse(resource.body).unpack()
        assert isinstance(secret, Secret)
        assert secret.name == name
        out[name] = secret
    return out


def trusted(secret: Secret) -> str:
    assert secret.validation_context is not None and secret.validation_context.trusted_ca is not None
    return (secret.validation_context.trusted_ca.inline_bytes or b"").decode()


@pytest.fixture
async def ca() -> InternalCA:
    return await InternalCA.open(MemoryStore())


async def test_a_class_is_published_only_once_its_identity_has_a_certificate(ca: InternalCA) -> None:
    provider = CountingProvider(ca)
    provider.gate = asyncio.Event()
    mesh = Mesh(provider)
    bundle = await mesh.set_bundle()
    buyer = mesh.proxy_class("buyer-1", BUYER)
    mesh.publisher.update([buyer])
    assert mesh.cache.get("buyer-1") is None  # no certificate yet: nothing to serve

    async with running(mesh.publisher):

        async def issuing() -> bool:
            return provider.calls == 1

        await eventually(issuing, 5, "the CA to be asked")
        assert mesh.cache.get("buyer-1") is None
        assert mesh.certificates.current(BUYER) is None
        provider.gate.set()
        await mesh.published("buyer-1")

    snapshot = mesh.cache.get("buyer-1")
    assert snapshot is not None
    certificate = mesh.certificates.current(BUYER)
    assert certificate is not None
    # The class's own resources are there unchanged.
    assert snapshot.resources(resource_types.CLUSTER)["buyer-1-cluster"] is buyer.resources[0]
    assert snapshot.resources(resource_types.LISTENER)["buyer-1"] is buyer.resources[1]
    secrets = secrets_of(snapshot)
    assert set(secrets) == {"service-cert", "root-cert"}
    own = secrets["service-cert"].tls_certificate
    assert own is not None and own.certificate_chain is not None and own.private_key is not None
    assert own.certificate_chain.inline_bytes == certificate.chain_pem.encode()
    assert own.private_key.inline_bytes == certificate.private_key_pem.encode()
    assert pem_util.uris(certificate.certificate) == ["spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"]
    root = secrets["root-cert"]
    assert trusted(root) == bundle
    # Only the trust anchors: which identities a service may present is in its clusters.
    assert root.validation_context is not None and not root.validation_context.match_typed_subject_alt_names


async def test_each_identity_gets_its_own_certificate_under_the_one_name(ca: InternalCA) -> None:
    """`service-cert` is the same name in every snapshot and a different key in each
    identity's; `root-cert` is one encoded secret for all."""
    mesh = Mesh(ca)
    await mesh.set_bundle()
    mesh.publisher.update([mesh.proxy_class("buyer-1", BUYER), mesh.proxy_class("store-1", STORE)])
    async with running(mesh.publisher):
        await mesh.published("buyer-1", "store-1")
    buyer, store = mesh.cache.get("buyer-1"), mesh.cache.get("store-1")
    assert buyer is not None and store is not None
    for snapshot, identity in ((buyer, BUYER), (store, STORE)):
        certificate = mesh.certificates.current(identity)
        assert certificate is not None
        own = secrets_of(snapshot)["service-cert"].tls_certificate
        assert own is not None and own.private_key is not None
        assert own.private_key.inline_bytes == certificate.private_key_pem.encode()
    buyer_key = mesh.certificates.current(BUYER)
    assert buyer_key is not None
    assert buyer_key.private_key_pem.encode() not in b"".join(r.body for r in store.resources(SDS).values())
    assert buyer.resources(SDS)["root-cert"] is store.resources(SDS)["root-cert"]


async def test_nothing_is_published_before_the_trust_bundle_is_known(ca: InternalCA) -> None:
    mesh = Mesh(ca)
    mesh.publisher.update([mesh.proxy_class("buyer-1", BUYER)])
    async with running(mesh.publisher):

        async def issued() -> bool:
            return mesh.certificates.current(BUYER) is not None

        await eventually(issued, 5, "the first certificate")
    assert mesh.cache.get("buyer-1") is None  # peers could not be checked: do not serve
    await mesh.set_bundle()
    assert mesh.cache.get("buyer-1") is not None


async def test_a_rotation_republishes_only_the_classes_of_that_identity() -> None:
    clock = FakeClock()
    ca = await InternalCA.open(MemoryStore(), clock=clock)
    mesh = Mesh(ca, clock)
    await mesh.set_bundle()
    buyers = [mesh.proxy_class("buyer-1", BUYER), mesh.proxy_class("buyer-2", BUYER)]
    store = mesh.proxy_class("store-1", STORE)
    async with running(mesh.publisher):
        mesh.publisher.update(buyers)
        await mesh.published("buyer-1", "buyer-2")
        # The bookstore's certificate is issued 12 hours later, so it comes due later.
        clock.advance(timedelta(hours=12))
        mesh.publisher.update([*buyers, store])
        await mesh.published("store-1")
    before = {key: mesh.cache.get(key) for key in ("buyer-1", "buyer-2", "store-1")}
    old_buyer_cert = mesh.certificates.current(BUYER)
    old_store_cert = mesh.certificates.current(STORE)
    assert old_buyer_cert is not None and old_store_cert is not None

    clock.advance(timedelta(hours=8))  # the buyer's certificate is due, the bookstore's is not
    report = await mesh.certificates.renew_due()

    assert report.renewed == [BUYER] and not report.failed
    assert mesh.rotated == [BUYER]
    new_buyer_cert = mesh.certificates.current(BUYER)
    assert new_buyer_cert is not None and new_buyer_cert.serial_number != old_buyer_cert.serial_number
    assert mesh.certificates.current(STORE) is old_store_cert
    # The bookstore's class was not touched: the very same snapshot object.
    assert mesh.cache.get("store-1") is before["store-1"]
    for key in ("buyer-1", "buyer-2"):
        old, new = before[key], mesh.cache.get(key)
        assert old is not None and new is not None and new is not old
        assert new.changed_types(old) == {SDS}, key
        old_secrets, new_secrets = old.resources(SDS), new.resources(SDS)
        name = "service-cert"
        assert new_secrets[name].version != old_secrets[name].version
        assert secrets_of(new)[name].tls_certificate.certificate_chain.inline_bytes == (  # type: ignore[union-attr]
            new_buyer_cert.chain_pem.encode()
        )
        # Trust secrets did not change: the same encoded objects are reused.
        for other in set(new_secrets) - {name}:
            assert new_secrets[other] is old_secrets[other], other
    # Both classes of the identity share one encoded service certificate.
    shared = "service-cert"
    one, two = mesh.cache.get("buyer-1"), mesh.cache.get("buyer-2")
    assert one is not None and two is not None
    assert one.resources(SDS)[shared] is two.resources(SDS)[shared]


async def test_a_trust_bundle_change_republishes_every_class(ca: InternalCA) -> None:
    mesh = Mesh(ca)
    await mesh.set_bundle()
    classes = [
        mesh.proxy_class("buyer-1", BUYER),
        mesh.proxy_class("buyer-2", BUYER),
        mesh.proxy_class("store-1", STORE),
    ]
    mesh.publisher.update(classes)
    async with running(mesh.publisher):
        await mesh.published("buyer-1", "buyer-2", "store-1")
    before = {c.key: mesh.cache.get(c.key) for c in classes}
    encodes = mesh.encoder.encodes

    mesh.publisher.set_trust_bundle(await ca.trust_bundle())  # unchanged: nothing happens
    assert {c.key: mesh.cache.get(c.key) for c in classes} == before
    assert mesh.encoder.encodes == encodes

    await ca.rotate_root()
    bundle = await mesh.set_bundle()
    assert len(pem_util.load_certificates(bundle)) == 2
    for proxy_class in classes:
        old, new = before[proxy_class.key], mesh.cache.get(proxy_class.key)
        assert old is not None and new is not None and new is not old
        assert new.changed_types(old) == {SDS}
        for name, secret in secrets_of(new).items():
            if name == "root-cert":
                assert trusted(secret) == bundle, name
            else:  # the certificate itself did not change and is not encoded again
                assert new.resources(SDS)[name] is old.resources(SDS)[name]
    # One root for the whole mesh: encoded once, then shared by every class.
    assert mesh.encoder.encodes == encodes + 1
    assert mesh.rotated == []


async def test_removed_classes_are_cleared_and_their_identity_forgotten(ca: InternalCA) -> None:
    mesh = Mesh(ca)
    await mesh.set_bundle()
    buyer, store = mesh.proxy_class("buyer-1", BUYER), mesh.proxy_class("store-1", STORE)
    mesh.publisher.update([buyer, store])
    async with running(mesh.publisher):
        await mesh.published("buyer-1", "store-1")
    mesh.publisher.update([buyer])
    assert mesh.cache.get("store-1") is None
    assert mesh.cache.get("buyer-1") is not None
    assert mesh.certificates.keys() == [BUYER]
    assert set(mesh.publisher.classes()) == {"buyer-1"}


class SlowForOne:
    """A CA that refuses the first request for `slow` and then hangs on it until released;
    every other identity is served at once."""

    def __init__(self, inner: CertificateProvider, slow: Identity) -> None:
        self.inner = inner
        self.slow_uri = slow.spiffe_id()
        self.release = asyncio.Event()
        self.slow_calls = 0

    @property
    def name(self) -> str:
        return "slow-for-one"

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        if self.slow_uri in request.uris:
            self.slow_calls += 1
            if self.slow_calls == 1:
                raise CertificateError(self.name, "refused (test)")
            await self.release.wait()
        return await self.inner.issue(request)

    async def trust_bundle(self) -> str:
        return await self.inner.trust_bundle()


async def test_a_failing_ca_delays_only_the_identity_it_fails_for(
    ca: InternalCA, caplog: pytest.LogCaptureFixture
) -> None:
    provider = SlowForOne(ca, STORE)
    mesh = Mesh(provider)
    await mesh.set_bundle()
    mesh.publisher.update([mesh.proxy_class("store-1", STORE), mesh.proxy_class("buyer-1", BUYER)])
    async with running(mesh.publisher):
        await mesh.published("buyer-1")

        async def retried() -> bool:
            return provider.slow_calls >= 2

        await eventually(retried, 5, "the refused identity to be retried")
        assert mesh.cache.get("store-1") is None
        assert "no certificate for bookstore/bookstore yet" in caplog.text
        provider.release.set()
        await mesh.published("store-1")
    certificate = mesh.certificates.current(STORE)
    assert certificate is not None
    assert certificate.certificate.issuer == ca.state.active.certificate.subject


async def test_the_renewal_task_notices_a_certificate_issued_while_it_sleeps() -> None:
    clock = FakeClock()
    ca = await InternalCA.open(MemoryStore(), clock=clock)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the renewal task's sleep; only cancellation ends it
        slept.append(seconds)
        await asyncio.Event().wait()

    policy = RenewalPolicy(renew_share=0.01)
    mesh = Mesh(ca, clock, validity=timedelta(seconds=30), policy=policy, sleep=sleep)
    await mesh.set_bundle()
    renewal = asyncio.create_task(mesh.certificates.run())
    try:
        await wait_until(lambda: slept == [60.0])  # nothing to renew yet: the longest nap
        async with running(mesh.publisher):
            mesh.publisher.update([mesh.proxy_class("buyer-1", BUYER)])
            await mesh.published("buyer-1")
        certificate = mesh.certificates.current(BUYER)
        assert certificate is not None
        # When the manager plans to renew (it corrects for the CA's back-dating of not_before).
        wakeup = mesh.certificates.next_wakeup()
        assert wakeup is not None
        due_in = (wakeup - clock()).total_seconds()
        assert due_in < 30
        # The task must plan again and wake up by the renewal point, not in a minute.
        await wait_until(lambda: len(slept) >= 2)
        assert slept[-1] <= max(due_in, 0)
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
