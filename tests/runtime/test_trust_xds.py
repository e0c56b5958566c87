"""The xDS listener's certificate and trust through a root rotation (meshcp.runtime.trust):
its certificate follows each phase with cross certificates back to the older roots, so
bootstraps written before, during and after the rotation all verify it; retired roots
leave the xDS bundle when they expire; other providers' trust bundle is the xDS bundle.
The controller is stepped by hand (`tests.runtime.stepped_controller`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from meshcp.certs import InternalCA, MemoryStore, ProxyIdentity
from meshcp.certs import pem as pem_util
from meshcp.certs.issuance import xds_client_request
from meshcp.certs.root_rotation import Phase
from meshcp.runtime.controller import ControllerRuntime
from tests.certs.support import CountingProvider, FakeClock
from tests.runtime.stepped_controller import controller, internal, phase, roots_in
from tests.support.mtls import XDS_SERVER_NAME, PemFiles, client_context, new_proxy, write_pem


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
