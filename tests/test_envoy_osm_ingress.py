"""OSM's IngressBackend on a real Envoy, on loopback: the compiled inbound listener admits
an ingress outside the mesh to the application, and refuses every other unmeshed client
(403 for HTTP, a closed connection for TLS it does not accept), while a mesh client still
reaches the same port over mTLS.

The listener is `lds.inbound_listener` as compiled (the mesh's chain, the ingress chain,
the TLS inspector), its secrets the mesh CA's (`sds.service_cert`, `sds.root_cert`),
with one change for loopback instead of iptables: the PROXY protocol listener filter in
place of the original destination filter, so a client's PROXY header names the port it
dialed, as iptables' redirect does. Clients connect from 127.0.0.2 (the ingress's
address, allowed) or 127.0.0.3 (another unmeshed client): the RBAC filter sees the
socket's peer. In network namespaces with iptables, the same policy is
tests/lab/test_lab_osm_policies.py's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import betterproto2

from meshcp.certs import InternalCA, IssuedCertificate, MemoryStore
from meshcp.certs.issuance import workload_request
from meshcp.compile import cds, lds, naming, rds, sds
from meshcp.identity import Identity
from meshcp.policy.types import HttpRule, InboundPort, IngressRule, ProxyPolicy, ServiceKey
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.mtls import PemFiles, write_pem
from tests.test_envoy_osm_egress import on_loopback
from tests.test_envoy_osm_policies import App, proxy

pytestmark = REAL_ENVOY

INGRESS_ADDRESS, OTHER = "127.0.0.2", "127.0.0.3"
STORE = ServiceKey("bookstore", "bookstore")
BOOKSTORE, BOOKBUYER, NGINX = (
    Identity("bookstore", "bookstore"),
    Identity("bookbuyer", "bookbuyer"),
    Identity("ingress", "nginx"),
)
MESH_SNI = naming.service_host("bookstore", "bookstore")
DEADLINE = 10.0  # a refused connection closes at once; this only turns a hang into a failure


def compiled(app: App, rule: IngressRule, ca: IssuedCertificate, bundle: str) -> list[betterproto2.Message]:
    """The bookstore pod's inbound side as compiled, with `rule` (its port: the app's),
    and its secrets: the pod's certificate and the mesh's trust bundle."""
    port = InboundPort(STORE, 14001, app.port, "http", (HttpRule(None, frozenset(), any_source=True),))
    policy = ProxyPolicy(BOOKSTORE, (port,), (), False, "cluster.local", None, (), (rule,))
    return [
        cds.local_cluster(port),
        on_loopback(lds.inbound_listener(policy)),
        *rds.inbound_routes(policy),
        sds.service_cert(ca.chain_pem, ca.private_key_pem),
        sds.root_cert(bundle),
    ]


@asynccontextmanager
async def inbound(app: App, rule: IngressRule, mesh: InternalCA) -> AsyncIterator[tuple[EnvoyProcess, int]]:
    issued = await mesh.issue(workload_request(BOOKSTORE))
    messages = compiled(app, rule, issued, await mesh.trust_bundle())
    # the listener is bound once its secrets and routes arrived: `proxy` waits for it
    async with proxy(*messages, types=("cds", "lds")) as (envoy, port):
        yield envoy, port


async def get(
    envoy_port: int, source: str, app_port: int, path: str, tls: ssl.SSLContext | None = None, sni: str = ""
) -> int:
    """GET `path` from `source` to the app's port through the sidecar: the status, 0 when
    the connection was closed without an answer (TLS refused, no chain)."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", envoy_port, local_addr=(source, 0))
        try:
            writer.write(f"PROXY TCP4 {source} 127.0.0.1 40000 {app_port}\r\n".encode())
            await writer.drain()
            if tls is not None:
                await writer.start_tls(tls, server_hostname=sni or None)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: books.test\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            answer = await reader.read()
        except (ssl.SSLError, ConnectionError):
            return 0
        finally:
            writer.close()
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def client_tls(files: PemFiles | None, bundle: Path) -> ssl.SSLContext:
    """A client trusting the mesh's CA for the pod's certificate (whose names are the
    pod's identity, not the SNI sent), presenting `files` if given."""
    context = ssl.create_default_context(cafile=str(bundle))
    context.check_hostname = False
    context.set_alpn_protocols(["http/1.1"])
    if files is not None:
        context.load_cert_chain(files.cert, files.key)
    return context


async def test_http_from_the_ingress_address_reaches_the_app_and_others_get_403(tmp_path: Path) -> None:
    mesh = await InternalCA.open(MemoryStore())
    bundle = await mesh.trust_bundle()
    buyer = write_pem(tmp_path, "buyer", await mesh.issue(workload_request(BOOKBUYER)), bundle)
    async with App() as app:
        rule = IngressRule(STORE, 14001, app.port, "http", (f"{INGRESS_ADDRESS}/32",))
        async with inbound(app, rule, mesh) as (envoy, sidecar):
            assert await get(sidecar, INGRESS_ADDRESS, app.port, "/from-ingress") == 200
            assert app.attempts == {"/from-ingress": 1}
            assert await get(sidecar, OTHER, app.port, "/from-other") == 403
            assert "/from-other" not in app.attempts
            # TLS that is not the mesh's (another SNI) has no chain: closed
            unchecked = client_tls(None, buyer.ca)
            assert await get(sidecar, INGRESS_ADDRESS, app.port, "/tls", unchecked, "books.test") == 0
            # a mesh client still reaches the same port over mTLS, by the mesh's SNI
            mesh_client = client_tls(buyer, buyer.ca)
            assert await get(sidecar, OTHER, app.port, "/mesh", mesh_client, MESH_SNI) == 200
            assert app.attempts["/mesh"] == 1
            assert await envoy.stat(f"http.ingress.{app.port}.rbac.denied") == 1


async def test_https_admits_the_ingress_principal_with_a_mesh_certificate_only(tmp_path: Path) -> None:
    mesh, foreign = await InternalCA.open(MemoryStore()), await InternalCA.open(MemoryStore())
    bundle = await mesh.trust_bundle()
    nginx = write_pem(tmp_path, "nginx", await mesh.issue(workload_request(NGINX)), bundle)
    buyer = write_pem(tmp_path, "buyer", await mesh.issue(workload_request(BOOKBUYER)), bundle)
    forged = write_pem(tmp_path, "forged", await foreign.issue(workload_request(NGINX)), bundle)
    async with App() as app:
        rule = IngressRule(STORE, 14001, app.port, "https", None, (NGINX,), True, ("books.test",))
        async with inbound(app, rule, mesh) as (envoy, sidecar):

            async def status(files: PemFiles | None, sni: str = "books.test", path: str = "/") -> int:
                return await get(sidecar, INGRESS_ADDRESS, app.port, path, client_tls(files, nginx.ca), sni)

            assert await status(nginx, path="/nginx") == 200
            assert app.attempts == {"/nginx": 1}
            assert await status(buyer, path="/buyer") == 403  # a mesh identity, not the principal
            assert await status(forged, path="/forged") == 0  # not the mesh's CA: no handshake
            assert await status(None, path="/anonymous") == 0  # no certificate
            assert set(app.attempts) == {"/nginx"}
            # Another name is not the ingress's: it lands on the mesh's chain without SNI
            # (for proxyless gRPC clients, which send none), under the mesh's mTLS and RBAC
            # (here any mesh identity), never the ingress's.
            assert await status(None, "other.test", "/anonymous-other-sni") == 0
            assert await status(nginx, "other.test", "/other-sni") == 200
            assert await envoy.stat("http.inbound.14001.downstream_rq_2xx") == 1
            assert set(app.attempts) == {"/nginx", "/other-sni"}


async def test_https_without_client_validation_admits_by_address(tmp_path: Path) -> None:
    mesh = await InternalCA.open(MemoryStore())
    bundle = await mesh.trust_bundle()
    (tmp_path / "ca.pem").write_text(bundle)
    anonymous = client_tls(None, tmp_path / "ca.pem")
    async with App() as app:
        rule = IngressRule(STORE, 14001, app.port, "https", (f"{INGRESS_ADDRESS}/32",), None, False)
        async with inbound(app, rule, mesh) as (_, sidecar):
            assert await get(sidecar, INGRESS_ADDRESS, app.port, "/in", anonymous, "any.test") == 200
            assert await get(sidecar, OTHER, app.port, "/out", anonymous, "any.test") == 403
            assert set(app.attempts) == {"/in"}
