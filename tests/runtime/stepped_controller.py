"""A controller for the tests of meshcp.runtime.trust: started, with only its publisher
running, so that each `trust.step()` is one deliberate tick of the root rotation state
machine; and what to look at in between (the CA's phase, the roots of a bundle).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from meshcp.certs import CertificateProvider, InternalCA
from meshcp.certs import pem as pem_util
from meshcp.certs.root_rotation import Phase
from meshcp.certs.setup import CaSettings
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings


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


def phase(ca: InternalCA) -> Phase:
    return ca.state.phase


def roots_in(bundle: str) -> list[str]:
    return [pem_util.fingerprint_sha256(cert) for cert in pem_util.load_certificates(bundle)]
