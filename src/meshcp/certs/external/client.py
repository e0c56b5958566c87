"""HTTP plumbing shared by the external CA clients: one request, every failure classified.

Connection failures, timeouts and 5xx/429 answers are retryable; other 4xx answers mean
the CA refused the request and retrying will not change its mind. `HttpProvider` is the
part of a provider that owns the session, so each CA client holds only its own protocol.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from meshcp.certs.provider import CertificateError, ClosableProvider

_SNIPPET = 200


class HttpClient:
    """An aiohttp session for one CA, created on first use and closed by `aclose`."""

    def __init__(
        self, provider: str, base_url: str, *, timeout: float, headers: dict[str, str] | None = None
    ):
        self._provider = provider
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return self._base_url

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _error(self, message: str, *, retryable: bool) -> CertificateError:
        return CertificateError(self._provider, message, retryable=retryable)

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        """Send a request; returns status and body, raising `CertificateError` if there is no answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout), headers=self._headers
            )
        url = self._base_url + path
        try:
            async with self._session.request(method, url, json=body) as response:
                return response.status, await response.read()
        except aiohttp.ClientConnectorError as exc:
            reason = exc.strerror or str(exc.os_error)
            raise self._error(f"cannot reach {self._base_url}: {reason}", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise self._error(f"{method} {url} failed: {exc or type(exc).__name__}", retryable=True) from exc
        except TimeoutError as exc:
            raise self._error(f"{method} {url}: no answer within {self._timeout:g}s", retryable=True) from exc

    def refused(self, status: int, reason: str) -> CertificateError:
        """The error for a non-2xx answer, retryable only if the CA is overloaded or broken."""
        return self._error(f"HTTP {status}: {reason}", retryable=status >= 500 or status == 429)

    def decode_json(self, status: int, body: bytes) -> Any:
        """Parse a JSON body; an unparseable error answer is reported with its status."""
        try:
            return json.loads(body)
        except ValueError:
            snippet = body[:_SNIPPET].decode("utf-8", "replace").strip()
            if status >= 300:
                raise self.refused(status, snippet or "(empty body)") from None
            raise self._error(f"malformed response (not JSON): {snippet!r}", retryable=False) from None

    def malformed(self, detail: str) -> CertificateError:
        return self._error(f"malformed response: {detail}", retryable=False)


class HttpProvider(ClosableProvider):
    """A provider that talks to its CA through one `HttpClient`, closed with the provider."""

    def __init__(self, base_url: str, *, timeout: float, headers: dict[str, str] | None = None) -> None:
        self._http = HttpClient(self.NAME, base_url, timeout=timeout, headers=headers)

    async def aclose(self) -> None:
        await self._http.aclose()
