"""The cfssl provider: keys are made here, only a CSR goes to cfssl.

It POSTs a CSR to `/api/v1/cfssl/sign`, so a private key never crosses the network, and
reads the trust anchor from `/api/v1/cfssl/info`. cfssl's signing profile, not the
request, decides validity and key usages (cfssl's sign API takes no lifetime); the
certificate's real lifetime is what rotation then uses.

cfssl 1.2.0 (Debian's golang-cfssl) drops URI SANs from what it signs. The mesh then
identifies such a workload by its DNS SAN `<sa>.<ns>.<trust-domain>`, which the same CA
signed: peers' SAN matchers and RBAC principals accept either form (Envoy matches the
URI SAN first and falls back to the DNS SAN). A warning says so once per provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshcp.certs import pem
from meshcp.certs.authority import leaf_subject, subject_alt_names
from meshcp.certs.external.client import HttpClient
from meshcp.certs.keys import PrivateKey, generate_private_key, private_key_pem
from meshcp.certs.provider import (
    CertificateRequest,
    IssuedCertificate,
    check_matches_request,
)

log = logging.getLogger(__name__)

_NAME = "cfssl"


def build_csr(key: PrivateKey, request: CertificateRequest) -> str:
    """A PEM CSR carrying the request's subject and SANs, signed by `key`."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(leaf_subject(request.common_name))
        .add_extension(subject_alt_names(request), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


class CfsslProvider:
    """Signs through a running `cfssl serve`; use as an async context manager (or `aclose`)."""

    def __init__(self, url: str, *, profile: str = "", label: str = "", timeout: float = 10.0) -> None:
        self._http = HttpClient(_NAME, url, timeout=timeout)
        self._profile = profile
        self._warned_uris = False
        self._label = label

    @property
    def name(self) -> str:
        return _NAME

    async def __aenter__(self) -> CfsslProvider:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        key = await asyncio.to_thread(generate_private_key, request.key_spec)
        body: dict[str, Any] = {"certificate_request": build_csr(key, request)}
        if self._profile:
            body["profile"] = self._profile
        if self._label:
            body["label"] = self._label
        result = await self._call("/api/v1/cfssl/sign", body)
        certificate_pem = result.get("certificate")
        if not isinstance(certificate_pem, str):
            raise self._http.malformed("result.certificate is missing")
        try:
            issued = IssuedCertificate.from_pem(certificate_pem, private_key_pem(key))
        except ValueError as exc:
            raise self._http.malformed(f"unusable certificate: {exc}") from exc
        if request.uris and not pem.uris(issued.certificate):
            if not self._warned_uris:
                self._warned_uris = True
                log.warning(
                    "the cfssl server drops URI SANs (cfssl 1.2.0 does): workloads are identified "
                    "by their DNS SAN instead of %s",
                    request.uris[0],
                )
            request = dataclasses.replace(request, uris=())
        check_matches_request(_NAME, issued, request)
        return issued

    async def trust_bundle(self) -> str:
        body: dict[str, Any] = {"label": self._label, "profile": self._profile}
        result = await self._call("/api/v1/cfssl/info", body)
        certificate_pem = result.get("certificate")
        if not isinstance(certificate_pem, str):
            raise self._http.malformed("result.certificate is missing")
        try:
            return pem.to_pem(pem.load_certificates(certificate_pem))
        except ValueError as exc:
            raise self._http.malformed(f"unusable CA certificate: {exc}") from exc

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the cfssl API; returns `result` of a successful answer."""
        status, raw = await self._http.request("POST", path, body)
        answer = self._http.decode_json(status, raw)
        if not isinstance(answer, dict):
            raise self._http.malformed("expected a JSON object")
        if status >= 300 or answer.get("success") is not True:
            raise self._http.refused(status, _cfssl_errors(answer))
        result = answer.get("result")
        if not isinstance(result, dict):
            raise self._http.malformed("result is missing")
        return result


def _cfssl_errors(answer: dict[str, Any]) -> str:
    """cfssl reports errors as `[{"code": 9002, "message": "..."}]`."""
    errors = answer.get("errors")
    messages = []
    if isinstance(errors, list):
        for error in errors:
            if isinstance(error, dict):
                messages.append(f"{error.get('message', '?')} (code {error.get('code', '?')})")
            else:
                messages.append(str(error))
    return "; ".join(messages) or "request failed without an error message"
