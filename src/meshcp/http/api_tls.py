"""The controller's HTTP endpoint served over TLS too, for the Kubernetes API aggregator.

An APIService (`deploy/metrics-apiservice.yaml`) makes the API server proxy
`/apis/metrics.smi-spec.io/v1alpha1/...` to a Service over HTTPS only, checking the
certificate against the APIService's `caBundle`. `meshcp serve --api-tls-cert/--api-tls-key`
adds this listener (`--api-address`) beside the plaintext one: the same routes, one more
port. The TLS context comes ready from the command line (it re-reads its files when they
change, as the injector's does), so a renewed certificate needs no restart.
"""

from __future__ import annotations

import ssl

from aiohttp import web

from meshcp.http.app import Controller, create_app

#: The HTTPS listener's default port.
API_PORT = 9443


class HttpsServer:
    """The controller's app on host:port over TLS, on the caller's loop."""

    def __init__(self, controller: Controller, tls: ssl.SSLContext) -> None:
        self._runner = web.AppRunner(create_app(controller), access_log=None)
        self._tls = tls
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._tls, reuse_address=True)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()
