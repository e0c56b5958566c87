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

import dataclasses
import logging
from typing import Any

from meshcp.certs import pem
from meshcp.certs.csr import new_key_and_csr
from meshcp.certs.external.client import HttpProvider
from meshcp.certs.keys import private_key_pem
from meshcp.certs.provider import CertificateRequest, IssuedCertificate, check_matches_request

log = logging.getLogger(__name__)

_NAME = "cfssl"


class CfsslProvider(HttpProvider):
    """Signs through a running `cfssl serve`; use as an async context manager (or `aclose`)."""

    NAME = _NAME

    def __init__(self, url: str, *, profile: str = "", label: str = "", timeout: float = 10.0) -> None:
        super().__init__(url, timeout=timeout)
        self._profile = profile
        self._warned_uris = False
        self._label = label

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        key, csr_pem = await new_key_and_csr(request)
        body: dict[str, Any] = {"certificate_request": csr_pem}
        if self._profile:
            body["profile"] = self._profile
        if self._label:
            body["label"] = self._label
        certificate_pem = await self._certificate("/api/v1/cfssl/sign", body)
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
        certificate_pem = await self._certificate("/api/v1/cfssl/info", body)
        try:
            return pem.to_pem(pem.load_certificates(certificate_pem))
        except ValueError as exc:
            raise self._http.malformed(f"unusable CA certificate: {exc}") from exc

    async def _certificate(self, path: str, body: dict[str, Any]) -> str:
        """POST to the cfssl API; returns `result.certificate` of a successful answer."""
        certificate_pem = (await self._call(path, body)).get("certificate")
        if not isinstance(certificate_pem, str):
            raise self._http.malformed("result.certificate is missing")
        return certificate_pem

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
