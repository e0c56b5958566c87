"""Two real Envoys talking mutual TLS with certificates and trust delivered by SDS, for the
tests at tests/test_envoy_mtls*.py.

The controller runs as `meshcp serve` does (`async with ControllerRuntime`, mTLS xDS from
the mesh CA). The "bookbuyer" Envoy (delta ADS) has an outbound HTTP listener whose
cluster calls the "bookstore" Envoy (SotW ADS) over mTLS, with the TLS context the
compiler gives every upstream cluster (`cds.upstream_cluster`); the bookstore's inbound
listener requires a client certificate and forwards to an aiohttp application. Each
Envoy bootstraps with its own xDS client certificate; its node id is the name in it.
Every request through the client Envoy is a new mTLS handshake between the Envoys
(one request per upstream connection), so the certificates in force are what is tested.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from meshcp._proto.envoy.config.core.v3 import TransportSocket
from meshcp.cache import Resource
from meshcp.certs import Identity, IssuedCertificate, ProxyIdentity
from meshcp.certs.issuance import xds_client_request
from meshcp.certs.setup import CaSettings
from meshcp.compile import cds, naming
from meshcp.policy.types import ServiceKey
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.settings import Address, Settings
from tests.support import eventually
from tests.support.bootstrap import mtls_ads_bootstrap
from tests.support.envoy import EnvoyProcess
from tests.support.http import new_connection_per_request
from tests.support.mtls import (
    CallerRecordingUpstream,
    PemFiles,
    mtls_cluster,
    mtls_listener,
    new_proxy,
    write_pem,
)
from tests.support.resources import eds_cluster, http_listener, load_assignment, route_configuration

NAMESPACE = "bookstore"
BOOKSTORE_HOST = f"bookstore.{NAMESPACE}.svc.cluster.local"
BOOKBUYER = Identity("bookbuyer", "bookbuyer")
BOOKSTORE = Identity(NAMESPACE, "bookstore")
BOOKTHIEF = Identity("bookthief", "bookthief")
OUTBOUND, INBOUND = "outbound", "inbound"


@dataclass
class Pair:
    """The controller, both Envoys, the application, and the classes they are served."""

    runtime: ControllerRuntime
    client: ProxyIdentity
    server: ProxyIdentity
    app: CallerRecordingUpstream
    tmp: Path
    client_envoy: EnvoyProcess | None = None
    server_envoy: EnvoyProcess | None = None
    inbound_port: int = 0
    outbound_port: int = 0
    #: Identities the client accepts for the bookstore (its cluster's SAN matchers).
    bookstore_identities: tuple[Identity, ...] = (BOOKSTORE,)
    extra_client_resources: tuple[Resource, ...] = ()

    def server_class(self) -> ProxyClass:
        encode = self.runtime.encoder.encode
        return ProxyClass(
            self.server.name,
            self.server.identity,
            (
                encode(mtls_listener(INBOUND, 0, "inbound-routes", naming.SERVICE_CERT, naming.ROOT_CERT)),
                encode(route_configuration("inbound-routes", "bookstore-local")),
                encode(eds_cluster("bookstore-local")),
                encode(load_assignment("bookstore-local", self.app.port)),
            ),
        )

    def client_class(self) -> ProxyClass:
        encode = self.runtime.encoder.encode
        return ProxyClass(
            self.client.name,
            self.client.identity,
            (
                encode(http_listener(OUTBOUND, 0, "outbound-routes")),
                encode(route_configuration("outbound-routes", "bookstore")),
                encode(mtls_cluster("bookstore", self.bookstore_tls())),
                # No endpoint until the bookstore's Envoy has bound its inbound port.
                encode(load_assignment("bookstore", *([self.inbound_port] if self.inbound_port else []))),
                *self.extra_client_resources,
            ),
        )

    def bookstore_tls(self) -> TransportSocket:
        """The client side of mTLS exactly as the compiler gives every client of the
        bookstore: `service-cert`, `root-cert` and the bookstore's SANs."""
        compiled = cds.upstream_cluster(
            ServiceKey(NAMESPACE, "bookstore"), 14001, False, self.bookstore_identities, "cluster.local"
        )
        assert compiled.transport_socket is not None
        return compiled.transport_socket

    def publish(self) -> None:
        self.runtime.publisher.update([self.server_class(), self.client_class()])

    @property
    def envoys(self) -> tuple[EnvoyProcess, EnvoyProcess]:
        assert self.client_envoy is not None and self.server_envoy is not None
        return self.client_envoy, self.server_envoy

    def logs(self) -> str:
        return "\n".join(envoy.log_tail() for envoy in self.envoys)

    async def xds_files(self, proxy: ProxyIdentity) -> PemFiles:
        issued = await self.runtime.issuer.issue(xds_client_request(proxy))
        return write_pem(self.tmp, proxy.proxy_uuid, issued, self.runtime.trust.bundle)

    def current(self, identity: Identity) -> IssuedCertificate:
        certificate = self.runtime.certificates.current(identity)
        assert certificate is not None
        return certificate


async def wait_port(envoy: EnvoyProcess, listener: str) -> int:
    port = 0

    async def bound() -> bool:
        nonlocal port
        port = await envoy.listener_port(listener) or 0
        return bool(port)

    await envoy.wait_for(bound, 20, f"listener {listener!r} to be active")
    return port


async def get(session: aiohttp.ClientSession, port: int) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}/books") as response:
        return response.status, await response.text()


def proxy_bootstrap(proxy: ProxyIdentity, xds_port: int, delta: bool, files: PemFiles) -> dict[str, Any]:
    """`proxy`'s Envoy bootstrap: mTLS ADS with the xDS client certificate in `files`."""
    return mtls_ads_bootstrap(proxy.name, xds_port, delta, cert=files.cert, key=files.key, ca=files.ca)


@asynccontextmanager
async def envoy_pair(
    tmp: Path, ca: CaSettings | None = None, trust_interval: float = 1.0, *, issue_first: bool = False
) -> AsyncIterator[Pair]:
    """The controller and both Envoys, with a request through them already answered.

    `issue_first` issues both workload certificates before the controller's renewal task
    starts. Needed for short-lived certificates: that task does not notice certificates
    issued while it sleeps (up to a minute; see test_publisher's renewal-wakeup test).
    """
    runtime = await ControllerRuntime.open(
        Settings(
            insecure_xds=False,
            xds_address=Address("127.0.0.1", 0),
            http_address=Address("127.0.0.1", 0),
            ca=ca or CaSettings(),
            trust_interval=trust_interval,
        )
    )
    if issue_first:
        for identity in (BOOKBUYER, BOOKSTORE):
            await runtime.certificates.get(identity)
    app = CallerRecordingUpstream("bookstore-app")
    async with runtime, app:
        pair = Pair(runtime, new_proxy("bookbuyer", "bookbuyer"), new_proxy(NAMESPACE, "bookstore"), app, tmp)
        server_files = await pair.xds_files(pair.server)
        client_files = await pair.xds_files(pair.client)
        pair.publish()
        server_bootstrap = proxy_bootstrap(pair.server, runtime.xds.port, False, server_files)
        client_bootstrap = proxy_bootstrap(pair.client, runtime.xds.port, True, client_files)
        async with (
            EnvoyProcess(server_bootstrap) as server_envoy,
            EnvoyProcess(client_bootstrap) as client_envoy,
        ):
            pair.server_envoy, pair.client_envoy = server_envoy, client_envoy
            pair.inbound_port = await wait_port(server_envoy, INBOUND)
            pair.publish()
            pair.outbound_port = await wait_port(client_envoy, OUTBOUND)
            async with new_connection_per_request() as http:

                async def answered() -> bool:
                    return await get(http, pair.outbound_port) == (200, app.name)

                await eventually(answered, 20, "a request through both Envoys", details=pair.logs)
            yield pair
