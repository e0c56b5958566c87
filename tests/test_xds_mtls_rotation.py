"""The controller's xDS listener over real gRPC and mutual TLS through root rotations: proxies
bootstrapped before, during and after a rotation (and a controller restart) connect; a
foreign CA's client certificate is still refused. `tests.support.xds_mtls` runs the
controller; one test bootstraps real Envoys to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import Secret
from meshcp.certs import InternalCA, ProxyIdentity, pem
from meshcp.certs.issuance import xds_client_request
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from tests.factories import cluster
from tests.support import eventually, free_port
from tests.support.bootstrap import mtls_ads_bootstrap
from tests.support.envoy import EnvoyProcess, envoy_binary
from tests.support.mtls import (
    AdsSecrets,
    PemFiles,
    client_context,
    foreign_ca,
    new_proxy,
    trusted_ca_of,
    write_pem,
    xds_channel,
)
from tests.support.resources import eds_cluster, load_assignment
from tests.support.xds_mtls import (
    HANDSHAKE_FAILED,
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


async def rotate_root_to_completion(runtime: ControllerRuntime) -> InternalCA:
    """Start a root rotation and let the background trust task finish it (no proxy lags)."""
    ca = runtime.provider
    assert isinstance(ca, InternalCA)
    await runtime.trust.rotate()

    async def finished() -> bool:
        return ca.state.previous is None

    await eventually(finished, 10, "the root rotation to finish")
    return ca


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
        trusted = trusted_ca_of(secrets["root-cert"])
        assert roots_in(trusted) == roots_in(new_root)
        assert all_rejected(second) == 0


# A real Envoy on both sides of a rotation ------------------------------------------


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
