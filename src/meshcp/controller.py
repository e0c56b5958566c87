"""The running controller: cache, xDS server and HTTP endpoint with one lifetime."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field

from meshcp.cache.snapshot_cache import SnapshotCache
from meshcp.http.app import Controller, HttpServer
from meshcp.metrics import Metrics
from meshcp.readiness import Readiness
from meshcp.xds.auth import Authorizer, Classifier, allow_any, by_node_id
from meshcp.xds.registry import ConnectedProxies
from meshcp.xds.server import XdsServer
from meshcp.xds.service import AggregatedDiscoveryService

log = logging.getLogger("meshcp")


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """`host:port` (IPv6 as `[::1]:15128`); raises ValueError with a readable message."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]") or "0.0.0.0", int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class Settings:
    """How `meshcp serve` runs."""

    #: gRPC (ADS) listener.
    xds_address: Address = field(default_factory=lambda: Address("127.0.0.1", 15128))
    #: HTTP listener for /healthz, /readyz, /metrics and /debug.
    http_address: Address = field(default_factory=lambda: Address("127.0.0.1", 9091))
    #: TLS of the xDS listener; None serves plaintext (`--insecure-xds`, local work only).
    xds_tls: ssl.SSLContext | None = None
    #: New streams served their initial configuration at once (reconnect storms).
    admission: int = 256


class ControllerRuntime:
    """Builds the parts of a controller and runs them until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        classify: Classifier = by_node_id,
        authorize: Authorizer = allow_any,
        readiness: Readiness | None = None,
    ) -> None:
        self.settings = settings
        self.cache = SnapshotCache()
        self.metrics = Metrics()
        self.readiness = readiness or Readiness()
        self.proxies = ConnectedProxies()
        service = AggregatedDiscoveryService(
            self.cache,
            self.readiness,
            self.metrics,
            self.proxies,
            classify=classify,
            authorize=authorize,
            admission=settings.admission,
        )
        self.xds = XdsServer(service)
        self.http = HttpServer(Controller(self.readiness, self.metrics, self.proxies, self.cache))

    async def start(self) -> None:
        """Open both listeners; on failure nothing is left listening."""
        s = self.settings
        try:
            await self.xds.start(s.xds_address.host, s.xds_address.port, s.xds_tls)
        except OSError as error:
            raise ListenError(f"cannot listen for xDS on {s.xds_address}: {error.strerror}") from None
        try:
            await self.http.start(s.http_address.host, s.http_address.port)
        except OSError as error:
            await self.xds.stop()
            raise ListenError(f"cannot listen for HTTP on {s.http_address}: {error.strerror}") from None
        log.info(
            "serving xDS on %s (%s), HTTP on %s",
            Address(s.xds_address.host, self.xds.port),
            "mTLS" if s.xds_tls is not None else "plaintext",
            Address(s.http_address.host, self.http.port),
        )

    async def stop(self) -> None:
        """Close streams and listeners; proxies keep their last configuration."""
        await self.xds.stop()
        await self.http.stop()

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.stop()


class ListenError(Exception):
    """A listener could not be opened (address in use, not permitted, ...)."""
