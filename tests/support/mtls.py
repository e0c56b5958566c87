"""Mutual TLS for tests: mesh and foreign certificates on disk, client TLS contexts, an
ADS client that ACKs only when told, and Envoy resources whose TLS comes from SDS.

    files = write_pem(tmp_path, "proxy", await runtime.issuer.issue(xds_client_request(p)), bundle)
    async with xds_channel(runtime.xds.port, client_context(files)) as channel:
        async with AdsSecrets.open(channel, delta=False) as sds:
            await sds.subscribe(p.name, ["service-cert", "root-cert"])
            secrets = await sds.receive()

Envoy resources are built from the generated classes in `meshcp._proto`; nested typed
configs are packed with `meshcp.cache.pack`, as production code does.
"""

from __future__ import annotations

import datetime
import ssl
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpclib.client
import grpclib.const
from aiohttp import web

from meshcp._proto.envoy.config.cluster.v3 import Cluster
from meshcp._proto.envoy.config.core.v3 import (
    Http1ProtocolOptions,
    Node,
    TransportSocket,
)
from meshcp._proto.envoy.config.core.v3 import (
    HttpProtocolOptions as CommonHttpProtocolOptions,
)
from meshcp._proto.envoy.config.listener.v3 import Filter, FilterChain, Listener
from meshcp._proto.envoy.extensions.filters.http.router.v3 import Router
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerForwardClientCertDetails,
    HttpConnectionManagerSetCurrentClientCertDetails,
    HttpFilter,
    Rds,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CommonTlsContext,
    DownstreamTlsContext,
    SdsSecretConfig,
    Secret,
    UpstreamTlsContext,
)
from meshcp._proto.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from meshcp._proto.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from meshcp.cache import pack, resource_types
from meshcp.certs import Identity, InternalCA, IssuedCertificate, MemoryStore, ProxyIdentity
from meshcp.xds.service import DELTA_PATH, SOTW_PATH
from tests.support.bootstrap import HTTP_PROTOCOL_OPTIONS
from tests.support.envoy import EnvoyProcess
from tests.support.resources import ads_source, eds_cluster, socket_address
from tests.support.upstream import Upstream

TLS_SOCKET = "envoy.transport_sockets.tls"
#: The name the controller's xDS certificate carries (Settings.xds_names).
XDS_SERVER_NAME = "localhost"
STREAM = grpclib.const.Cardinality.STREAM_STREAM


def new_proxy(namespace: str, service_account: str) -> ProxyIdentity:
    """A sidecar of `namespace/service_account` with a fresh UUID; its name is the node id."""
    return ProxyIdentity(str(uuid.uuid4()), Identity(namespace, service_account))


async def foreign_ca() -> InternalCA:
    """A CA the mesh has never heard of (same software, different root)."""
    return await InternalCA.open(MemoryStore())


def serial_hex(certificate: IssuedCertificate) -> str:
    """A serial number as Envoy's admin `/certs` prints it (lowercase hex)."""
    return format(certificate.serial_number, "x")


# Files and TLS contexts -----------------------------------------------------------


@dataclass(frozen=True)
class PemFiles:
    """A certificate chain, its key and the trust bundle, as files (Envoy and `ssl` need paths)."""

    cert: Path
    key: Path
    ca: Path


def write_pem(directory: Path, name: str, issued: IssuedCertificate, bundle: str) -> PemFiles:
    """Write `<name>.crt`, `<name>.key` (0600) and `<name>-ca.pem` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ca = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}-ca.pem"
    cert.write_text(issued.chain_pem)
    key.touch(0o600)
    key.write_text(issued.private_key_pem)
    ca.write_text(bundle)
    return PemFiles(cert, key, ca)


def client_context(files: PemFiles, *, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
    """A TLS client presenting `files.cert` and trusting `files.ca` (hostnames checked)."""
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(files.cert, files.key)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


@asynccontextmanager
async def xds_channel(port: int, context: ssl.SSLContext) -> AsyncIterator[grpclib.client.Channel]:
    """A gRPC channel to the controller's xDS port, dialled as "localhost" (its certificate's name)."""
    channel = grpclib.client.Channel(XDS_SERVER_NAME, port, ssl=context)
    try:
        yield channel
    finally:
        channel.close()


# An ADS client for secrets ----------------------------------------------------------


class AdsSecrets:
    """One ADS stream (SotW or delta) that subscribes to secrets and ACKs only on request,
    so a test can play a proxy that lags behind a push."""

    def __init__(self, stream: Any, delta: bool) -> None:
        self._stream = stream
        self.delta = delta
        self._names: list[str] = []
        self._last: DiscoveryResponse | DeltaDiscoveryResponse | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, channel: grpclib.client.Channel, *, delta: bool) -> AsyncIterator[AdsSecrets]:
        request: Any
        if delta:
            request = channel.request(DELTA_PATH, STREAM, DeltaDiscoveryRequest, DeltaDiscoveryResponse)
        else:
            request = channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse)
        async with request as stream:
            client = cls(stream, delta)
            yield client
            await stream.end()

    async def subscribe(self, node_id: str, names: Sequence[str]) -> None:
        """The first request: node id and the secret names wanted."""
        self._names = list(names)
        node = Node(id=node_id, cluster="meshcp-test")
        if self.delta:
            await self._stream.send_message(
                DeltaDiscoveryRequest(
                    node=node, type_url=resource_types.SECRET, resource_names_subscribe=self._names
                )
            )
        else:
            await self._stream.send_message(
                DiscoveryRequest(node=node, type_url=resource_types.SECRET, resource_names=self._names)
            )

    async def receive(self) -> dict[str, Secret]:
        """The next response's secrets by name (not ACKed yet). Raises GRPCError when refused."""
        response = await self._stream.recv_message()
        if response is None:
            raise ConnectionError("the server ended the stream")
        self._last = response
        if isinstance(response, DeltaDiscoveryResponse):
            packed = [resource.resource for resource in response.resources if resource.resource]
        else:
            packed = list(response.resources)
        secrets: dict[str, Secret] = {}
        for item in packed:
            secret = item.unpack()
            assert isinstance(secret, Secret), secret
            secrets[secret.name] = secret
        return secrets

    @property
    def removed(self) -> list[str]:
        """Names the last delta response removed (or said do not exist)."""
        last = self._last
        return list(last.removed_resources) if isinstance(last, DeltaDiscoveryResponse) else []

    async def ack(self) -> None:
        """ACK the last response."""
        last = self._last
        assert last is not None, "nothing to ACK"
        if isinstance(last, DeltaDiscoveryResponse):
            await self._stream.send_message(
                DeltaDiscoveryRequest(type_url=resource_types.SECRET, response_nonce=last.nonce)
            )
        else:
            await self._stream.send_message(
                DiscoveryRequest(
                    type_url=resource_types.SECRET,
                    resource_names=self._names,
                    response_nonce=last.nonce,
                    version_info=last.version_info,
                )
            )


def chain_of(secret: Secret) -> str:
    """The PEM certificate chain of a `service-cert` secret."""
    assert secret.tls_certificate is not None and secret.tls_certificate.certificate_chain is not None
    return (secret.tls_certificate.certificate_chain.inline_bytes or b"").decode()


def trusted_ca_of(secret: Secret) -> str:
    """The PEM trust bundle of a `root-cert` secret."""
    assert secret.validation_context is not None and secret.validation_context.trusted_ca is not None
    return (secret.validation_context.trusted_ca.inline_bytes or b"").decode()


# Envoy resources with TLS from SDS --------------------------------------------------


def sds_secret(name: str) -> SdsSecretConfig:
    """`{name, sds_config: {ads: {}, resource_api_version: V3}}`: the secret comes over ADS."""
    return SdsSecretConfig(name=name, sds_config=ads_source())


def _common_tls(cert_secret: str, validation_secret: str) -> CommonTlsContext:
    return CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds_secret(cert_secret)],
        validation_context_sds_secret_config=sds_secret(validation_secret),
    )


def upstream_mtls(cert_secret: str, validation_secret: str, sni: str) -> TransportSocket:
    """Client side of mesh mTLS: present `cert_secret`, check the peer against `validation_secret`."""
    context = UpstreamTlsContext(common_tls_context=_common_tls(cert_secret, validation_secret), sni=sni)
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def downstream_mtls(cert_secret: str, validation_secret: str) -> TransportSocket:
    """Server side of mesh mTLS: a client certificate is required and checked."""
    context = DownstreamTlsContext(
        common_tls_context=_common_tls(cert_secret, validation_secret), require_client_certificate=True
    )
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def mtls_cluster(
    name: str, transport_socket: TransportSocket, *, one_request_per_connection: bool = True
) -> Cluster:
    """An EDS cluster reached over mTLS (`transport_socket`: `upstream_mtls`, or the one
    the compiler gives an upstream cluster). With `one_request_per_connection` every
    request is a new TLS handshake, so the certificates in force right now are what is
    tested."""
    cluster = eds_cluster(name)
    cluster.transport_socket = transport_socket
    if one_request_per_connection:
        options = HttpProtocolOptions(
            common_http_protocol_options=CommonHttpProtocolOptions(max_requests_per_connection=1),
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http_protocol_options=Http1ProtocolOptions()
            ),
        )
        cluster.typed_extension_protocol_options = {HTTP_PROTOCOL_OPTIONS: pack(options)}
    return cluster


def mtls_listener(
    name: str, port: int, route_config: str, cert_secret: str, validation_secret: str
) -> Listener:
    """An HTTP listener on 127.0.0.1:`port` terminating mesh mTLS (client certificate required).

    The application is told who called: `x-forwarded-client-cert` carries the client
    certificate's URI SAN (its SPIFFE id), set by Envoy and never taken from the client.
    """
    manager = HttpConnectionManager(
        stat_prefix=name,
        rds=Rds(config_source=ads_source(), route_config_name=route_config),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=pack(Router()))],
        forward_client_cert_details=HttpConnectionManagerForwardClientCertDetails.SANITIZE_SET,
        set_current_client_cert_details=HttpConnectionManagerSetCurrentClientCertDetails(uri=True),
    )
    hcm = Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))
    return Listener(
        name=name,
        address=socket_address(port),
        filter_chains=[
            FilterChain(filters=[hcm], transport_socket=downstream_mtls(cert_secret, validation_secret))
        ],
    )


class CallerRecordingUpstream(Upstream):
    """An `Upstream` that also records each request's `x-forwarded-client-cert` header."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        super().__init__(name, host)
        self.callers: list[str] = []

    async def _answer(self, request: web.Request) -> web.Response:
        self.callers.append(request.headers.get("x-forwarded-client-cert", ""))
        return await super()._answer(request)


# Envoy's view of its certificates ---------------------------------------------------


async def envoy_serials(envoy: EnvoyProcess) -> set[str]:
    """Serial numbers (lowercase hex) of every certificate Envoy presents (admin `/certs`)."""
    raw = await envoy.admin_json("/certs")
    serials: set[str] = set()
    for context in raw.get("certificates", []):
        for cert in context.get("cert_chain", []):
            serial = str(cert.get("serial_number", "")).lower().lstrip("0")
            if serial:
                serials.add(serial)
    return serials


async def envoy_sds_roots(envoy: EnvoyProcess) -> set[str]:
    """Serial numbers of the trust anchors in Envoy's TLS contexts that came over SDS."""
    raw = await envoy.admin_json("/certs")
    return {
        str(ca.get("serial_number", "")).lower().lstrip("0")
        for context in raw.get("certificates", [])
        for ca in context.get("ca_cert", [])
        if ca.get("path") == "<inline>"
    }


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
