"""A proxy's secrets over a real ADS stream: it subscribes to `service-cert` and `root-cert`
as Envoy does, keeps what it was sent (across reconnects, as Envoy keeps its configuration
when its controller goes away), ACKs when told to or always, reconnects with back-off, and
says whether what it holds is usable: its certificate valid now and signed by a root it
trusts. The fault tests watch certificates through it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import grpclib.client
import grpclib.const
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from grpclib.exceptions import GRPCError, StreamTerminatedError

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import Secret
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshcp.cache import resource_types
from meshcp.certs.pem import load_certificates
from meshcp.compile import naming

NAMES = [naming.ROOT_CERT, naming.SERVICE_CERT]
STREAM = grpclib.const.Cardinality.STREAM_STREAM


def signed_by_one_of(leaf: x509.Certificate, roots: list[x509.Certificate]) -> bool:
    for root in roots:
        if leaf.issuer != root.subject:
            continue
        try:
            leaf.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


class SdsProxy:
    """Run with `async with`; `held` is what it holds by secret name."""

    def __init__(self, port: int, node_id: str, *, auto_ack: bool = True) -> None:
        self.port = port
        self.node_id = node_id
        self.auto_ack = auto_ack
        self.held: dict[str, Secret] = {}
        self.connects = 0
        self._version = ""
        self._received: asyncio.Queue[DiscoveryResponse] = asyncio.Queue()
        self._stream: grpclib.client.Stream[DiscoveryRequest, DiscoveryResponse] | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SdsProxy:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def next(self) -> DiscoveryResponse:
        """The next response received (held already)."""
        return await self._received.get()

    async def ack(self, response: DiscoveryResponse) -> None:
        if self._stream is not None:
            self._version = response.version_info
            await self._stream.send_message(
                DiscoveryRequest(
                    type_url=resource_types.SECRET,
                    resource_names=NAMES,
                    response_nonce=response.nonce,
                    version_info=response.version_info,
                )
            )

    def roots(self) -> list[x509.Certificate]:
        secret = self.held.get(naming.ROOT_CERT)
        if (
            secret is None
            or secret.validation_context is None
            or secret.validation_context.trusted_ca is None
        ):
            return []
        return load_certificates(secret.validation_context.trusted_ca.inline_bytes or b"")

    def certificate(self) -> x509.Certificate | None:
        secret = self.held.get(naming.SERVICE_CERT)
        if (
            secret is None
            or secret.tls_certificate is None
            or secret.tls_certificate.certificate_chain is None
        ):
            return None
        return load_certificates(secret.tls_certificate.certificate_chain.inline_bytes or b"")[0]

    def usable(self) -> bool:
        """Its certificate is valid now and signed by a root it trusts."""
        leaf = self.certificate()
        now = datetime.now(UTC)
        return (
            leaf is not None
            and leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
            and signed_by_one_of(leaf, self.roots())
        )

    async def _run(self) -> None:
        delay = 0.05
        while True:
            channel = grpclib.client.Channel("127.0.0.1", self.port)
            try:
                async with channel.request(
                    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                    STREAM,
                    DiscoveryRequest,
                    DiscoveryResponse,
                ) as stream:
                    self._stream = stream
                    self.connects += 1
                    # as Envoy on a new stream: its names, and the version it holds
                    await stream.send_message(
                        DiscoveryRequest(
                            node=Node(id=self.node_id, cluster="faults"),
                            type_url=resource_types.SECRET,
                            resource_names=NAMES,
                            version_info=self._version,
                        )
                    )
                    delay = 0.05
                    while (response := await stream.recv_message()) is not None:
                        for any_message in response.resources:
                            secret = Secret.parse(any_message.value)
                            self.held[secret.name] = secret
                        self._received.put_nowait(response)
                        if self.auto_ack:
                            await self.ack(response)
            except (GRPCError, StreamTerminatedError, ConnectionError, OSError):
                pass
            finally:
                self._stream = None
                channel.close()
            await asyncio.sleep(delay)  # Envoy's reconnect back-off, not a synchronisation
            delay = min(delay * 2, 1.0)
