"""The controller's HTTP endpoint served over TLS too, for the Kubernetes API aggregator.

An APIService (`deploy/metrics-apiservice.yaml`) makes the API server proxy
`/apis/metrics.smi-spec.io/v1alpha1/...` to a Service over HTTPS only, checking the
certificate against the APIService's `caBundle`. `meshcp serve --api-tls-cert/--api-tls-key`
adds this listener (`--api-address`) beside the plaintext one: the same routes, one more
port. The certificate is re-read when its files change (the injector's `ReloadingTls`:
cert-manager renews it in place), so a renewed certificate needs no restart.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from meshcp.http.app import IDLE_TIMEOUT, Controller, create_app
from meshcp.injector.tls_reload import ReloadingTls

#: The HTTPS listener's default port.
API_PORT = 9443


class HttpsServer:
    """The controller's app on host:port over TLS, on the caller's loop."""

    def __init__(
        self, controller: Controller, cert: Path, key: Path, *, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self._runner = web.AppRunner(create_app(controller), access_log=None, keepalive_timeout=idle_timeout)
        self._files = (cert, key)
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Load the certificate and listen; OSError (ssl.SSLError included) when either fails."""
        tls = ReloadingTls(*self._files)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls.context, reuse_address=True)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()
