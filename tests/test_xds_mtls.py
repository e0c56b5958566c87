"""The controller's xDS listener over real gRPC and mutual TLS from the mesh CA.

`async with ControllerRuntime` runs it as `meshcp serve` does: listeners plus publisher,
renewal and trust tasks. Clients are grpclib channels dialling "localhost" with xDS
client certificates issued by the runtime (`xds_client_request`), trusting its bundle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpclib.const
import pytest
from grpclib.exceptions import GRPCError

from meshcp.cache import resource_types
from meshcp.certs import IssuedCertificate
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.compile import sds as compile_sds
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
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
        assert chain_of(secrets[f"service-cert:{STORE}"]) == certificate.chain_pem
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
    """Even if the foreign secret sat in the proxy's own snapshot (a compiler mistake), the
    stream never delivers it: the guard drops the name from the request."""
    proxy = new_proxy("bookbuyer", "bookbuyer")
    store_cert = await runtime.issuer.issue(workload_request(STORE))
    leaked = runtime.encoder.encode(
        compile_sds.service_cert(STORE, store_cert.chain_pem, store_cert.private_key_pem)
    )
    runtime.publisher.update(
        [ProxyClass(proxy.name, BUYER, (leaked,), upstreams={("bookstore", "bookstore"): (STORE,)})]
    )

    async def published() -> bool:
        return runtime.cache.get(proxy.name) is not None

    await eventually(published, 5, "the class to be published")
    snapshot = runtime.cache.get(proxy.name)
    assert snapshot is not None
    foreign = ["service-cert:bookstore/bookstore", "root-cert-for-mtls-inbound:bookstore/bookstore"]
    assert foreign[0] in snapshot.resources(resource_types.SECRET)  # only the guard stands in the way
    outbound = "root-cert-for-mtls-outbound:bookstore/bookstore"

    files = await xds_files(runtime, tmp_path, proxy)
    async with (
        xds_channel(runtime.xds.port, client_context(files)) as channel,
        AdsSecrets.open(channel, delta=delta) as sds,
    ):
        await sds.subscribe(proxy.name, [*own_names(proxy), *foreign, outbound])
        secrets = await sds.receive()
        assert refused_secrets(runtime) == 2
        await sds.ack()
    assert set(secrets) == {*own_names(proxy), outbound}
    certificate = runtime.certificates.current(BUYER)
    assert certificate is not None
    assert chain_of(secrets["service-cert:bookbuyer/bookbuyer"]) == certificate.chain_pem
    assert store_cert.private_key_pem.encode() not in b"".join(
        secret.tls_certificate.private_key.inline_bytes or b""
        for secret in secrets.values()
        if secret.tls_certificate is not None and secret.tls_certificate.private_key is not None
    )
    assert all_rejected(runtime) == 0
