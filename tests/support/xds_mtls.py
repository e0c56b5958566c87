"""The controller's xDS listener over mutual TLS from the mesh CA, for the tests at
tests/test_xds_mtls*.py: its settings, proxies published to it with the xDS client
certificates of their bootstraps, and what its authoriser rejected.
"""

from __future__ import annotations

import ssl
from datetime import timedelta
from pathlib import Path

from grpclib.exceptions import StreamTerminatedError

from meshcp.certs import Identity, ProxyIdentity
from meshcp.certs.issuance import xds_client_request
from meshcp.certs.setup import CaSettings
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.settings import Address, Settings
from tests.factories import cluster
from tests.support import eventually
from tests.support.mtls import PemFiles, write_pem

BUYER = Identity("bookbuyer", "bookbuyer")
STORE = Identity("bookstore", "bookstore")
#: What fails when the TLS handshake refuses the client (grpclib reports it on first use).
HANDSHAKE_FAILED = (ssl.SSLError, ConnectionError, StreamTerminatedError)


def mtls_settings(state_dir: Path | None = None, xds_port: int = 0) -> Settings:
    """`meshcp serve` with mTLS xDS on loopback (`xds_port`, 0: any), the internal CA (kept in
    `state_dir`, or in memory) and a trust task that ticks every 0.1 s."""
    return Settings(
        insecure_xds=False,
        xds_address=Address("127.0.0.1", xds_port),
        http_address=Address("127.0.0.1", 0),
        ca=CaSettings(state_dir=state_dir),
        trust_interval=0.1,
    )


def all_rejected(runtime: ControllerRuntime) -> float:
    return sum(
        sample.value
        for metric in runtime.metrics.registry.collect()
        if metric.name == "meshcp_xds_rejected_streams"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


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
    """The secrets every proxy subscribes to: its own certificate and the trust bundle,
    under names that are the same for every proxy."""
    return ["service-cert", "root-cert"]
