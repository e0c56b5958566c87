"""The Vault provider: the PKI secrets engine's `issue` endpoint.

Vault generates the key (the role decides its type and size; `CertificateRequest.key_spec`
does not apply) and returns it with the certificate over TLS to Vault. The trust anchors
are the self-signed certificates of the mount's CA chain, or the mount's CA itself when
the chain has no root (a root mount on older Vault).

The role must allow the mesh's names: URI SANs `spiffe://<trust-domain>/*`, DNS names
under the trust domain, and any common name (xDS client names exceed 64 characters).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

from cryptography import x509

from meshcp.certs import pem
from meshcp.certs.external.client import HttpProvider
from meshcp.certs.provider import CertificateRequest, IssuedCertificate, check_matches_request

_NAME = "vault"


def vault_ttl(validity: timedelta) -> str:
    """Vault durations: whole seconds with a unit."""
    return f"{max(int(validity.total_seconds()), 1)}s"


def _vault_errors(answer: object) -> str:
    """Vault reports errors as `{"errors": ["..."]}`."""
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if isinstance(errors, list) and errors:
        return "; ".join(str(error).strip() for error in errors)
    return "request failed without an error message"


class VaultProvider(HttpProvider):
    """Issues through `POST /v1/<mount>/issue/<role>`; use as an async context manager."""

    NAME = _NAME

    def __init__(
        self, address: str, token: str, *, role: str, mount: str = "pki", timeout: float = 10.0
    ) -> None:
        super().__init__(address, timeout=timeout, headers={"X-Vault-Token": token})
        self._mount = "/".join(quote(part, safe="") for part in mount.strip("/").split("/"))
        self._role = quote(role, safe="")

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        body = {
            "common_name": request.common_name or (request.dns_names + request.uris)[0],
            "alt_names": ",".join(request.dns_names),
            "ip_sans": ",".join(str(ip) for ip in request.ip_addresses),
            "uri_sans": ",".join(request.uris),
            "ttl": vault_ttl(request.validity),
            "format": "pem",
            "private_key_format": "pkcs8",
            # The common name is only for humans; the SANs are exactly what was asked.
            "exclude_cn_from_sans": True,
        }
        data = await self._data("POST", f"/v1/{self._mount}/issue/{self._role}", body)
        certificate_pem, private_key = data.get("certificate"), data.get("private_key")
        if not isinstance(certificate_pem, str) or not isinstance(private_key, str):
            raise self._http.malformed("data.certificate or data.private_key is missing")
        try:
            intermediates = [c for c in _ca_chain(data) if not pem.is_self_signed(c)]
            issued = IssuedCertificate.from_pem(
                certificate_pem + "\n" + pem.to_pem(intermediates), private_key
            )
        except ValueError as exc:
            raise self._http.malformed(f"unusable certificate: {exc}") from exc
        serial = data.get("serial_number")
        if isinstance(serial, str) and _parse_serial(serial) != issued.serial_number:
            raise self._http.malformed(f"serial_number {serial!r} does not match the certificate")
        check_matches_request(_NAME, issued, request)
        return issued

    async def trust_bundle(self) -> str:
        status, raw = await self._http.request("GET", f"/v1/{self._mount}/ca_chain")
        # Vault versions without the endpoint answer 404: fall back to the CA alone.
        chain = [] if status == 404 else self._pem_certificates(status, raw, allow_empty=True)
        roots = [certificate for certificate in chain if pem.is_self_signed(certificate)]
        if not roots:
            status, raw = await self._http.request("GET", f"/v1/{self._mount}/ca/pem")
            roots = self._pem_certificates(status, raw, allow_empty=False)
        return pem.to_pem(roots)

    def _pem_certificates(self, status: int, raw: bytes, *, allow_empty: bool) -> list[x509.Certificate]:
        if status >= 300:
            raise self._http.refused(status, _vault_errors(self._http.decode_json(status, raw)))
        if allow_empty and not raw.strip():
            return []
        try:
            return pem.load_certificates(raw)
        except ValueError as exc:
            raise self._http.malformed(f"expected PEM certificates: {exc}") from exc

    async def _data(self, method: str, path: str, body: object) -> dict[str, Any]:
        status, raw = await self._http.request(method, path, body)
        answer = self._http.decode_json(status, raw)
        if status >= 300:
            raise self._http.refused(status, _vault_errors(answer))
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise self._http.malformed("the response has no data object")
        return data


def _ca_chain(data: dict[str, Any]) -> list[x509.Certificate]:
    """The CA certificates Vault returned alongside a certificate (ValueError if unparseable)."""
    chain = data.get("ca_chain")
    texts = [text for text in chain if isinstance(text, str)] if isinstance(chain, list) else []
    issuing_ca = data.get("issuing_ca")
    if not texts and isinstance(issuing_ca, str):
        texts = [issuing_ca]
    return [certificate for text in texts for certificate in pem.load_certificates(text)]


def _parse_serial(text: str) -> int | None:
    """Vault writes serials as colon-separated hex (`39:dd:2e:...`)."""
    try:
        return int(text.replace(":", "").replace("-", ""), 16)
    except ValueError:
        return None
