"""The controller's xDS listener over real gRPC and mutual TLS from the mesh CA.

`async with ControllerRuntime` runs it as `meshcp serve` does: listeners plus publisher,
renewal and trust tasks. Clients are grpclib channels dialling "localhost" with xDS
client certificates issued by the runtime (`xds_client_request`), trusting its bundle.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpclib.const
import pytest
from grpclib.exceptions import GRPCError

from meshcp.cache import resource_types
from meshcp.certs import IssuedCertificate, ProxyIdentity
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.compile import sds as compile_sds
from meshcp.policy.types import ProxyPolicy
from meshcp.runtime.classify import ProxyClassifier
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from tests.factories import cluster
from tests.support import eventually
from tests.support.mtls import (
    AdsSecrets,
    chain_of,
    client_context,
    foreign_ca,
    new_proxy,
    utc_now,
    write_pem,
    xds_channel,
)
from tests.support.xds_mtls import (
    BUYER,
    HANDSHAKE_FAILED,
    STORE,
    all_rejected,
    mtls_settings,
    own_names,
    register,
    xds_files,
)


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    async with await ControllerRuntime.open(mtls_settings()) as runtime:
        yield runtime


@pytest.fixture(params=[False, True], ids=["sotw", "delta"])
def delta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def rejected(runtime: ControllerRuntime, reason: str) -> float:
    value = runtime.metrics.registry.get_sample_value("meshcp_xds_rejected_streams_total", {"reason": reason})
    return value or 0.0


def refused_secrets(runtime: ControllerRuntime) -> float:
    return runtime.metrics.registry.get_sample_value("meshcp_xds_refused_secrets_total") or 0.0


async def test_a_proxy_with_its_xds_certificate_gets_its_secrets(
    runtime: ControllerRuntime, tmp_path: Path, delta: bool
) -> None:
    proxy = new_proxy("bookstore", "bookstore")
    await register(runtime, proxy)
    files = await xds_files(runtime, tmp_path, proxy)
    async with (
        xds_channel(runtime.xds.port, client_context(files)) as channel,
        AdsSecrets.open(channel, delta=delta) as sds,
    ):
        await sds.subscribe(proxy.name, own_names(proxy))
        secrets = await sds.receive()
        await sds.ack()
        assert set(secrets) == set(own_names(proxy))
        certificate = runtime.certificates.current(STORE)
        assert certificate is not None
        assert chain_of(secrets["service-cert"]) == certificate.chain_pem
        (entry,) = runtime.proxies.status()
        assert entry["node_id"] == proxy.name
        assert entry["identity"] == "bookstore/bookstore"
        assert entry["stream"] == ("delta" if delta else "sotw")
    assert all_rejected(runtime) == 0


async def test_a_client_certificate_from_another_ca_fails_the_handshake(
    runtime: ControllerRuntime, tmp_path: Path
) -> None:
    proxy = new_proxy("bookstore", "bookstore")
    await register(runtime, proxy)
    other = await foreign_ca()
    files = write_pem(tmp_path, "foreign", await other.issue(xds_client_request(proxy)), runtime.trust.bundle)
    with pytest.raises(HANDSHAKE_FAILED):
        async with (
            xds_channel(runtime.xds.port, client_context(files)) as channel,
            AdsSecrets.open(channel, delta=False) as sds,
        ):
            await sds.subscribe(proxy.name, own_names(proxy))
            await sds.receive()
    # Refused by TLS itself: no stream ever reached the authoriser.
    assert all_rejected(runtime) == 0
    assert len(runtime.proxies) == 0


async def test_an_expired_xds_certificate_is_refused(runtime: ControllerRuntime, tmp_path: Path) -> None:
    """A certificate that expires while its connection is open: the next stream on that
    connection is refused by the authoriser ("expired"); a new connection fails the handshake."""
    proxy = new_proxy("bookstore", "bookstore")
    await register(runtime, proxy)
    files = await xds_files(runtime, tmp_path, proxy, validity=timedelta(seconds=3))
    not_after = IssuedCertificate.from_pem(files.cert.read_text(), files.key.read_text()).not_after
    async with xds_channel(runtime.xds.port, client_context(files)) as channel:
        async with AdsSecrets.open(channel, delta=False) as sds:
            await sds.subscribe(proxy.name, own_names(proxy))
            assert set(await sds.receive()) == set(own_names(proxy))

        async def expired() -> bool:
            return utc_now() > not_after

        await eventually(expired, 10, "the certificate to expire")
        with pytest.raises(GRPCError) as error:
            async with AdsSecrets.open(channel, delta=False) as sds:
                await sds.subscribe(proxy.name, own_names(proxy))
                await sds.receive()
    assert error.value.status == grpclib.const.Status.PERMISSION_DENIED
    assert "expired" in (error.value.message or "")
    assert rejected(runtime, "expired") == 1

    with pytest.raises(HANDSHAKE_FAILED):
        async with (
            xds_channel(runtime.xds.port, client_context(files)) as channel,
            AdsSecrets.open(channel, delta=False) as sds,
        ):
            await sds.subscribe(proxy.name, own_names(proxy))
            await sds.receive()
    assert all_rejected(runtime) == 1


@pytest.mark.parametrize("kind", ["node-mismatch", "not-a-sidecar"])
async def test_a_certificate_that_does_not_name_the_node_is_refused(
    runtime: ControllerRuntime, tmp_path: Path, kind: str
) -> None:
    proxy = new_proxy("bookstore", "bookstore")
    await register(runtime, proxy)
    if kind == "node-mismatch":  # the certificate of another proxy of the same account
        files = await xds_files(runtime, tmp_path, new_proxy("bookstore", "bookstore"))
    else:  # a workload certificate: trusted, client-auth, but no sidecar name
        issued = await runtime.issuer.issue(workload_request(STORE))
        files = write_pem(tmp_path, "workload", issued, runtime.trust.bundle)
    with pytest.raises(GRPCError) as error:
        async with (
            xds_channel(runtime.xds.port, client_context(files)) as channel,
            AdsSecrets.open(channel, delta=False) as sds,
        ):
            await sds.subscribe(proxy.name, own_names(proxy))
            await sds.receive()
    assert error.value.status == grpclib.const.Status.PERMISSION_DENIED
    assert f"({kind})" in (error.value.message or "")
    assert rejected(runtime, kind) == 1
    assert all_rejected(runtime) == 1
    assert len(runtime.proxies) == 0


async def test_another_identitys_secret_is_refused_and_counted(
    runtime: ControllerRuntime, tmp_path: Path, delta: bool
) -> None:
    """Names other than `service-cert` and `root-cert` are dropped from the request and
    counted: even if a foreign secret sat in the proxy's own snapshot under such a name
    (a compiler mistake), the stream never delivers it."""
    proxy = new_proxy("bookbuyer", "bookbuyer")
    store_cert = await runtime.issuer.issue(workload_request(STORE))
    leaked = runtime.encoder.encode(
        compile_sds.service_cert(store_cert.chain_pem, store_cert.private_key_pem),
        name="service-cert:bookstore/bookstore",
    )
    runtime.publisher.update([ProxyClass(proxy.name, BUYER, (leaked,))])

    async def published() -> bool:
        return runtime.cache.get(proxy.name) is not None

    await eventually(published, 5, "the class to be published")
    snapshot = runtime.cache.get(proxy.name)
    assert snapshot is not None
    # OSM's per-identity and per-service names (and older meshcp's).
    foreign = [
        "service-cert:bookstore/bookstore",
        "root-cert-for-mtls-inbound:bookstore/bookstore",
        "root-cert-for-mtls-outbound:bookstore/bookstore",
    ]
    assert foreign[0] in snapshot.resources(resource_types.SECRET)  # only the guard stands in the way

    files = await xds_files(runtime, tmp_path, proxy)
    async with (
        xds_channel(runtime.xds.port, client_context(files)) as channel,
        AdsSecrets.open(channel, delta=delta) as sds,
    ):
        await sds.subscribe(proxy.name, [*own_names(proxy), *foreign])
        secrets = await sds.receive()
        assert refused_secrets(runtime) == 3
        await sds.ack()
    assert set(secrets) == set(own_names(proxy))
    certificate = runtime.certificates.current(BUYER)
    assert certificate is not None
    assert chain_of(secrets["service-cert"]) == certificate.chain_pem
    assert store_cert.private_key_pem.encode() not in b"".join(
        secret.tls_certificate.private_key.inline_bytes or b""
        for secret in secrets.values()
        if secret.tls_certificate is not None and secret.tls_certificate.private_key is not None
    )
    assert all_rejected(runtime) == 0


async def test_the_shared_name_resolves_only_to_the_streams_own_identity(tmp_path: Path, delta: bool) -> None:
    """`service-cert` is one name for every proxy, and each class's snapshot holds its own
    identity's key under it: a stream is only ever served a class of the identity it was
    authorised as. A bookbuyer certificate that carries the bookstore pod's proxy UUID
    (nothing ties the UUID to the identity) is authorised as the bookbuyer and is served
    nothing, while the bookstore's own proxy gets the bookstore's key."""
    classifier = ProxyClassifier()
    async with await ControllerRuntime.open(mtls_settings(), classify=classifier) as runtime:
        store = new_proxy("bookstore", "bookstore")
        impostor = ProxyIdentity(store.proxy_uuid, BUYER)
        pod = ("bookstore", "bookstore-0")
        classifier.update(
            {store.proxy_uuid: pod},
            {pod: "store-class"},
            {"store-class": ProxyPolicy(STORE, (), (), False, "cluster.local")},
        )
        encoded = runtime.encoder.encode(cluster("c"))
        runtime.publisher.update([ProxyClass("store-class", STORE, (encoded,))])

        async def published() -> bool:
            return runtime.cache.get("store-class") is not None

        await eventually(published, 5, "the class to be published")

        store_files = await xds_files(runtime, tmp_path, store)
        async with (
            xds_channel(runtime.xds.port, client_context(store_files)) as channel,
            AdsSecrets.open(channel, delta=delta) as sds,
        ):
            await sds.subscribe(store.name, own_names(store))
            secrets = await sds.receive()
        certificate = runtime.certificates.current(STORE)
        assert certificate is not None
        assert chain_of(secrets["service-cert"]) == certificate.chain_pem

        impostor_files = await xds_files(runtime, tmp_path, impostor)
        async with (
            xds_channel(runtime.xds.port, client_context(impostor_files)) as channel,
            AdsSecrets.open(channel, delta=delta) as sds,
        ):
            await sds.subscribe(impostor.name, own_names(impostor))

            async def connected() -> bool:
                return any(e["node_id"] == impostor.name for e in runtime.proxies.status())

            await eventually(connected, 5, "the impostor's stream to be open")
            (entry,) = [e for e in runtime.proxies.status() if e["node_id"] == impostor.name]
            assert entry["identity"] == "bookbuyer/bookbuyer"
            assert entry["class"] == impostor.name  # not the bookstore's class
            assert runtime.cache.get(impostor.name) is None
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sds.receive(), 1.0)
        assert refused_secrets(runtime) == 0
        assert all_rejected(runtime) == 0
