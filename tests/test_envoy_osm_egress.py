"""OSM's Egress on a real Envoy, on loopback: the compiled outbound listener lets a class
reach what its Egress allows outside the mesh, and refuses the rest (403 for another
HTTP host, a closed connection for another address, port or SNI), never a hang.

The listener is `lds.outbound_listener` as compiled, with two changes for loopback
instead of iptables: it is bound to each address and port a client dials (so Envoy
matches the chains on the destination the client chose, as it does on the one restored
from iptables' redirect), without the original destination listener filter; and the
compiled ORIGINAL_DST cluster keeps the dialed address but overrides its port with the
test server's (the listener holds the dialed port itself). The "outside" servers listen
on 127.0.0.2 (allowed) and 127.0.0.3 (not allowed). With iptables, in network namespaces,
the same policy is tests/lab/test_lab_osm_policies.py's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from meshcp._proto.envoy.config.cluster.v3 import Cluster
from meshcp._proto.envoy.config.listener.v3 import Listener, ListenerFilter
from meshcp._proto.google.protobuf import Any as AnyMessage
from meshcp.compile import cds, lds, naming
from meshcp.identity import Identity
from meshcp.model.smi import HTTPMatch
from meshcp.policy.types import EgressHost, EgressRule, ProxyPolicy
from tests.support.ads import LISTENER
from tests.support.envoy import REAL_ENVOY
from tests.support.outside_tls import self_signed
from tests.support.resources import socket_address
from tests.test_envoy_osm_policies import proxy

pytestmark = REAL_ENVOY

ALLOWED, OTHER = "127.0.0.2", "127.0.0.3"
PROXY_PROTOCOL = "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
DEADLINE = 10.0  # a refused connection closes at once; this only turns a hang into a failure


def free_port(*hosts: str) -> int:
    """A port free on every address of `hosts` (the servers listen on each)."""
    while True:
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port


def compiled(*rules: EgressRule) -> tuple[Listener, Cluster]:
    """The outbound listener and original destination cluster of a class whose Egresses
    allow `rules` (no mesh service: only the Egress chains)."""
    policy = ProxyPolicy(Identity("curl", "curl"), (), (), False, "cluster.local", None, rules)
    (cluster,) = [c for c in cds.local_clusters(policy) if c.name == naming.PASSTHROUGH_CLUSTER]
    return lds.outbound_listener(policy), cluster


def on_loopback(listener: Listener) -> Listener:
    """`listener` on 127.0.0.1 (port chosen by Envoy), with the PROXY protocol filter in
    place of the original destination filter: a client's PROXY header names the
    destination it dialed, which Envoy takes as the connection's restored local address,
    exactly as it takes the one iptables' redirect leaves (`SO_ORIGINAL_DST`)."""
    listener.name = LISTENER
    listener.address = socket_address(0)
    listener.listener_filters = [
        ListenerFilter(
            name="envoy.filters.listener.proxy_protocol", typed_config=AnyMessage(type_url=PROXY_PROTOCOL)
        ),
        *(f for f in listener.listener_filters if "original_dst" not in f.name),
    ]
    return listener


@asynccontextmanager
async def servers(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    """`handle` on ALLOWED and OTHER (the outside hosts), on one port: yields it."""
    port = free_port(ALLOWED, OTHER)
    started = [await asyncio.start_server(handle, host, port, ssl=tls) for host in (ALLOWED, OTHER)]
    try:
        yield port
    finally:
        for server in started:
            server.close()
            await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each line with the address it was reached at and the line; an HTTP request
    (up to its blank line) with 200 and that address."""
    here = writer.get_extra_info("sockname")[0]
    try:
        while line := await reader.readline():
            if line.startswith(b"GET "):
                head = [line]
                while (more := await reader.readline()) not in (b"\r\n", b""):
                    head.append(more)
                body = f"outside {here} {line.split()[1].decode()}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            else:
                writer.write(f"{here} ".encode() + line)
            await writer.drain()
    finally:
        writer.close()


@asynccontextmanager
async def dial(
    envoy_port: int, host: str, port: int, tls: ssl.SSLContext | None = None, sni: str | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
    """A connection to host:port as the application makes it: to the sidecar, which learns
    the destination from the PROXY header (iptables' redirect, on loopback). None: the
    sidecar closed it during the TLS handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", envoy_port)
    try:
        writer.write(f"PROXY TCP4 127.0.0.1 {host} 40000 {port}\r\n".encode())
        await writer.drain()
        if tls is not None:
            try:
                await writer.start_tls(tls, server_hostname=sni)
            except (ssl.SSLError, ConnectionError):
                yield None
                return
        yield reader, writer
    finally:
        writer.close()


async def exchange(envoy_port: int, host: str, port: int, request: bytes = b"hello\n", **tls: Any) -> bytes:
    """Send `request` on a new connection to host:port; what came back before the answer's
    end or the close ("" when the connection was closed without an answer)."""
    async with asyncio.timeout(DEADLINE), dial(envoy_port, host, port, **tls) as connection:
        if connection is None:
            return b""
        reader, writer = connection
        try:
            writer.write(request)
            await writer.drain()
            if request.startswith(b"GET "):
                return await reader.read()  # `Connection: close`
            return await reader.readline()
        except (ssl.SSLError, ConnectionError):
            return b""


def get(host: str, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def status(answer: bytes) -> int:
    """The status of an HTTP answer (0: none, the connection was closed)."""
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else 0


async def test_http_reaches_the_allowed_host_and_gets_403_for_any_other() -> None:
    get_only = HTTPMatch("get", "/get", ("GET",))
    async with servers(echo) as port:
        listener, cluster = compiled(
            EgressRule(port, "http", (), (EgressHost("httpbin.org"), EgressHost("api.test", (get_only,))))
        )
        async with proxy(on_loopback(listener), cluster, types=("cds", "lds")) as (envoy, sidecar):
            answer = await exchange(sidecar, ALLOWED, port, get("httpbin.org", "/anything"))
            assert status(answer) == 200 and answer.endswith(f"outside {ALLOWED} /anything".encode())
            # no ipAddresses: any address, and each request reaches the address dialed
            answer = await exchange(sidecar, OTHER, port, get(f"httpbin.org:{port}", "/any"))
            assert status(answer) == 200 and answer.endswith(f"outside {OTHER} /any".encode())
            assert status(await exchange(sidecar, ALLOWED, port, get("evil.test", "/stolen"))) == 403
            assert status(await exchange(sidecar, ALLOWED, port, get("api.test", "/get"))) == 200
            # not in its HTTPRouteGroup
            assert status(await exchange(sidecar, ALLOWED, port, get("api.test", "/post"))) == 403
            # a port no Egress names: closed at once, no answer
            assert await exchange(sidecar, ALLOWED, port + 1, get("httpbin.org")) == b""
            # (Envoy names the listener's stats by its configured address, port 0 here)
            assert await envoy.stat("listener.127.0.0.1_0.no_filter_chain_match") == 1


async def test_tcp_reaches_the_allowed_range_only() -> None:
    async with servers(echo) as port:
        listener, cluster = compiled(EgressRule(port, "tcp", (f"{ALLOWED}/32",)))
        async with proxy(on_loopback(listener), cluster, types=("cds", "lds")) as (_, sidecar):
            assert await exchange(sidecar, ALLOWED, port) == f"{ALLOWED} hello\n".encode()
            assert await exchange(sidecar, OTHER, port) == b""


def outside_tls(directory: Path, host: str) -> tuple[Path, ssl.SSLContext]:
    """A certificate of the outside host's own for `host` (not the mesh's), and a server
    context presenting it."""
    certificate, key = self_signed(host)
    cert, key_file = directory / "outside.crt", directory / "outside.key"
    cert.write_text(certificate)
    key_file.write_text(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key_file)
    return cert, context


async def test_https_reaches_the_allowed_sni_only(tmp_path: Path) -> None:
    certificate, server_tls = outside_tls(tmp_path, "secure.test")
    client_tls = ssl.create_default_context(cafile=certificate)
    unchecked = ssl.create_default_context()
    unchecked.check_hostname, unchecked.verify_mode = False, ssl.CERT_NONE
    async with servers(echo, server_tls) as port:
        listener, cluster = compiled(EgressRule(port, "https", (), (), ("secure.test",)))
        async with proxy(on_loopback(listener), cluster, types=("cds", "lds")) as (_, sidecar):
            # end to end with the outside host's own certificate
            answer = await exchange(sidecar, ALLOWED, port, tls=client_tls, sni="secure.test")
            assert answer == f"{ALLOWED} hello\n".encode()
            assert await exchange(sidecar, ALLOWED, port, tls=unchecked, sni="other.test") == b""
            assert await exchange(sidecar, ALLOWED, port) == b""  # not TLS at all
