"""The controller's xDS listener over real gRPC and mutual TLS from the mesh CA.

`async with ControllerRuntime` runs it as `meshcp serve` does: listeners plus publisher,
renewal and trust tasks. Clients are grpclib channels dialling "localhost" with xDS
client certificates issued by the runtime (`xds_client_request`), trusting its bundle.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpclib.const
import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError

from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import Secret
from meshcp.cache import resource_types
from meshcp.certs import Identity, InternalCA, IssuedCertificate, ProxyIdentity, pem
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.certs.setup import CaSettings
from meshcp.compile import sds as compile_sds
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.settings import Address, Settings
from tests.certs.support import free_port
from tests.factories import cluster
from tests.support import eventually
from tests.support.envoy import EnvoyProcess, envoy_binary, mtls_ads_bootstrap
from tests.support.mtls import (
    AdsSecrets,
    PemFiles,
    chain_of,
    client_context,
    foreign_ca,
    new_proxy,
    trusted_ca_of,
    utc_now,
    write_pem,
    xds_channel,
)
from tests.support.resources import eds_cluster, load_assignment

BUYER = Identity("bookbuyer", "bookbuyer")
STORE = Identity("bookstore", "bookstore")
#: What fails when the TLS handshake refuses the client (grpclib reports it on first use).
HANDSHAKE_FAILED = (ssl.SSLError, ConnectionError, StreamTerminatedError)


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    runtime = await ControllerRuntime.open(
        Settings(
            insecure_xds=False,
            xds_address=Address("127.0.0.1", 0),
            http_address=Address("127.0.0.1", 0),
            ca=CaSettings(),
            trust_interval=0.1,
        )
    )
    async with runtime:
        yield runtime


@pytest.fixture(params=[False, True], ids=["sotw", "delta"])
def delta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def rejected(runtime: ControllerRuntime, reason: str) -> float:
    value = runtime.metrics.registry.get_sample_value("meshcp_xds_rejected_streams_total", {"reason": reason})
    return value or 0.0


def all_rejected(runtime: ControllerRuntime) -> float:
    return sum(
        sample.value
        for metric in runtime.metrics.registry.collect()
        if metric.name == "meshcp_xds_rejected_streams"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def refused_secrets(runtime: ControllerRuntime) -> float:
    return runtime.metrics.registry.get_sample_value("meshcp_xds_refused_secrets_total") or 0.0


async def register(runtime: ControllerRuntime, proxy: ProxyIdentity, *extra: ProxyClass) -> None:
    """Publish `proxy`'s class (key = node id) and wait until it is served."""
    classes = [ProxyClass(proxy.name, proxy.identity, (runtime.encoder.encode(cluster("c")),)), *extra]
    runtime.publisher.update(classes)

    async def published() -> bool:
        return all(runtime.cache.get(c.key) is not None for c in classes)

    await eventually(published, 5, "the classes to be published")


async def xds_files(
    runtime: ControllerRuntime, directory: Path, proxy: ProxyIdentity, validity: timedelta | None = None
) -> PemFiles:
    request = xds_client_request(proxy) if validity is None else xds_client_request(proxy, validity=validity)
    issued = await runtime.issuer.issue(request)
    return write_pem(directory, proxy.proxy_uuid, issued, runtime.trust.bundle)


def own_names(proxy: ProxyIdentity) -> list[str]:
    return [f"service-cert:{proxy.identity}", f"root-cert-for-mtls-inbound:{proxy.identity}"]


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


async def test_a_proxy_certified_by_the_new_root_connects_during_a_rotation(
    runtime: ControllerRuntime, tmp_path: Path
) -> None:
    """The listener's TLS learns new roots as the bundle changes."""
    proxy = new_proxy("bookstore", "bookstore")
    await register(runtime, proxy)
    await runtime.trust.rotate()
    ca = runtime.provider
    assert isinstance(ca, InternalCA) and ca.state.previous is not None
    files = await xds_files(runtime, tmp_path, proxy)  # signed by the new root
    async with (
        xds_channel(runtime.xds.port, client_context(files)) as channel,
        AdsSecrets.open(channel, delta=False) as sds,
    ):
        await sds.subscribe(proxy.name, own_names(proxy))
        assert set(await sds.receive()) == set(own_names(proxy))
        await sds.ack()


async def rotate_root_to_completion(runtime: ControllerRuntime) -> InternalCA:
    """Start a root rotation and let the background trust task finish it (no proxy lags)."""
    ca = runtime.provider
    assert isinstance(ca, InternalCA)
    await runtime.trust.rotate()

    async def finished() -> bool:
        return ca.state.previous is None

    await eventually(finished, 10, "the root rotation to finish")
    return ca


async def test_a_proxy_bootstrapped_before_a_root_rotation_can_reconnect_after_it(
    runtime: ControllerRuntime, tmp_path: Path
) -> None:
    proxy = new_proxy("bookstore", "bookstore")
    await register(runtime, proxy)
    files = await xds_files(runtime, tmp_path, proxy)  # written into the bootstrap at pod start
    await rotate_root_to_completion(runtime)
    async with (
        xds_channel(runtime.xds.port, client_context(files)) as channel,
        AdsSecrets.open(channel, delta=False) as sds,
    ):
        await sds.subscribe(proxy.name, own_names(proxy))
        assert set(await sds.receive()) == set(own_names(proxy))


async def test_a_proxy_bootstrapped_after_a_root_rotation_can_connect(
    runtime: ControllerRuntime, tmp_path: Path
) -> None:
    proxy = new_proxy("bookstore", "bookstore")
    await register(runtime, proxy)
    await rotate_root_to_completion(runtime)
    files = await xds_files(runtime, tmp_path, proxy)  # new root; the bundle holds only it
    async with (
        xds_channel(runtime.xds.port, client_context(files)) as channel,
        AdsSecrets.open(channel, delta=False) as sds,
    ):
        await sds.subscribe(proxy.name, own_names(proxy))
        assert set(await sds.receive()) == set(own_names(proxy))


# Root rotation and the xDS channel --------------------------------------------------


def roots_in(bundle: str) -> list[str]:
    return [pem.fingerprint_sha256(certificate) for certificate in pem.load_certificates(bundle)]


async def receives_its_secrets(port: int, files: PemFiles, proxy: ProxyIdentity) -> dict[str, Secret]:
    """Handshake with the controller as `files` says, then one ADS round trip (ACKed)."""
    async with (
        xds_channel(port, client_context(files)) as channel,
        AdsSecrets.open(channel, delta=False) as sds,
    ):
        await sds.subscribe(proxy.name, own_names(proxy))
        secrets = await sds.receive()
        await sds.ack()
    assert set(secrets) == set(own_names(proxy))
    return secrets


async def test_proxies_trusting_only_the_old_or_only_the_new_root_both_connect_after_a_rotation(
    runtime: ControllerRuntime, tmp_path: Path
) -> None:
    """One listener, two kinds of bootstrap: the server's chain is leaf -> new root, plus the
    cross certificate -> old root for proxies that trust nothing else."""
    before, after = new_proxy("bookstore", "bookstore"), new_proxy("bookstore", "bookstore")
    await register(
        runtime, before, ProxyClass(after.name, after.identity, (runtime.encoder.encode(cluster("c")),))
    )
    old_files = await xds_files(runtime, tmp_path / "before", before)
    old_root = runtime.trust.bundle
    ca = await rotate_root_to_completion(runtime)
    new_files = await xds_files(runtime, tmp_path / "after", after)
    new_root = ca.state.active.pem

    assert old_files.ca.read_text() == old_root and new_files.ca.read_text() == new_root
    assert roots_in(runtime.trust.bundle) == roots_in(new_root)  # workloads: the new root only
    assert roots_in(runtime.trust.xds_bundle) == roots_in(new_root + old_root)
    served = runtime.trust.server_certificate
    assert served is not None
    leaf, cross = pem.load_certificates(served.chain_pem)
    assert leaf.issuer == cross.subject == ca.state.active.certificate.subject
    assert cross.issuer == pem.load_certificates(old_root)[0].subject

    await receives_its_secrets(runtime.xds.port, old_files, before)
    await receives_its_secrets(runtime.xds.port, new_files, after)
    assert all_rejected(runtime) == 0


async def test_a_client_certificate_from_another_ca_is_still_refused_after_a_rotation(
    runtime: ControllerRuntime, tmp_path: Path
) -> None:
    proxy = new_proxy("bookstore", "bookstore")
    await register(runtime, proxy)
    await rotate_root_to_completion(runtime)
    other = await foreign_ca()
    files = write_pem(tmp_path, "foreign", await other.issue(xds_client_request(proxy)), runtime.trust.bundle)
    with pytest.raises(HANDSHAKE_FAILED):
        await receives_its_secrets(runtime.xds.port, files, proxy)
    assert all_rejected(runtime) == 0
    assert len(runtime.proxies) == 0


def mtls_settings(state_dir: Path, xds_port: int = 0) -> Settings:
    return Settings(
        insecure_xds=False,
        xds_address=Address("127.0.0.1", xds_port),
        http_address=Address("127.0.0.1", 0),
        ca=CaSettings(state_dir=state_dir),
        trust_interval=0.1,
    )


async def test_an_old_root_bootstrap_gets_its_config_after_the_rotation_and_a_restart(tmp_path: Path) -> None:
    """The retired root's certificate is persisted: a controller restarted on the same state
    directory still accepts xDS client certificates it signed, while workloads (SDS) trust
    only the new root."""
    state_dir = tmp_path / "ca"
    proxy = new_proxy("bookstore", "bookstore")
    async with await ControllerRuntime.open(mtls_settings(state_dir)) as first:
        await register(first, proxy)
        files = await xds_files(first, tmp_path / "proxy", proxy)  # the pod starts
        old_root = first.trust.bundle
        new = (await rotate_root_to_completion(first)).state.active
        new_root = new.pem
    assert [key.name for key in state_dir.glob("*.key")] == [f"root-{new.id}.key"]  # the old key is gone

    async with await ControllerRuntime.open(mtls_settings(state_dir)) as second:
        assert roots_in(second.trust.bundle) == roots_in(new_root)
        assert roots_in(second.trust.xds_bundle) == roots_in(new_root + old_root)
        await register(second, proxy)
        secrets = await receives_its_secrets(second.xds.port, files, proxy)
        inbound = trusted_ca_of(secrets[f"root-cert-for-mtls-inbound:{proxy.identity}"])
        assert roots_in(inbound) == roots_in(new_root)
        assert all_rejected(second) == 0


def envoy_class(runtime: ControllerRuntime, proxy: ProxyIdentity, cluster_name: str) -> ProxyClass:
    """Config for a real Envoy: one EDS cluster with its endpoints (it warms at once)."""
    resources = (
        runtime.encoder.encode(eds_cluster(cluster_name)),
        runtime.encoder.encode(load_assignment(cluster_name, 9)),
    )
    return ProxyClass(proxy.name, proxy.identity, resources)


async def has_cluster(envoy: EnvoyProcess, name: str) -> None:
    async def present() -> bool:
        return name in await envoy.clusters()

    await envoy.wait_for(present, 30, f"Envoy to receive cluster {name}")


def envoy_bootstrap(proxy: ProxyIdentity, port: int, files: PemFiles) -> dict[str, Any]:
    return mtls_ads_bootstrap(proxy.name, port, False, cert=files.cert, key=files.key, ca=files.ca)


@pytest.mark.envoy
async def test_envoy_bootstrapped_before_a_rotation_reconnects_after_it_and_a_restart(tmp_path: Path) -> None:
    """Real Envoy (BoringSSL) on both sides of a rotation: one bootstrapped before it (old
    root, old client certificate) reconnects to the restarted controller, which presents
    leaf -> cross certificate; one bootstrapped after it trusts only the new root."""
    envoy_binary()
    state_dir, port = tmp_path / "ca", free_port()
    before, after = new_proxy("bookstore", "bookstore"), new_proxy("bookbuyer", "bookbuyer")
    async with contextlib.AsyncExitStack() as first_controller:
        first = await first_controller.enter_async_context(
            await ControllerRuntime.open(mtls_settings(state_dir, port))
        )
        first.publisher.update([envoy_class(first, before, "before-rotation")])
        old_files = await xds_files(first, tmp_path / "before", before)
        async with EnvoyProcess(envoy_bootstrap(before, port, old_files)) as old_envoy:
            await has_cluster(old_envoy, "before-rotation")
            await rotate_root_to_completion(first)
            await first_controller.aclose()  # the connection drops; Envoy redials

            async with await ControllerRuntime.open(mtls_settings(state_dir, port)) as second:
                assert second.xds.port == port
                second.publisher.update(
                    [
                        envoy_class(second, before, "after-restart"),
                        envoy_class(second, after, "new-bootstrap"),
                    ]
                )
                new_files = await xds_files(second, tmp_path / "after", after)
                assert roots_in(new_files.ca.read_text()) == roots_in(second.trust.bundle)
                assert len(roots_in(old_files.ca.read_text() + new_files.ca.read_text())) == 2
                async with EnvoyProcess(envoy_bootstrap(after, port, new_files)) as new_envoy:
                    await has_cluster(old_envoy, "after-restart")
                    await has_cluster(new_envoy, "new-bootstrap")
                assert all_rejected(second) == 0
