"""Checking who is on the other end of an xDS connection.

Rule: a sidecar's Envoy node id IS the name in its xDS client certificate,
`<proxy-uuid>.sidecar.<sa>.<ns>.<trust-domain>`. The server compares the node id the
proxy claims with the name the mesh CA signed; nothing in node metadata is trusted for
identity. `verify_xds_client` is pure (the time is passed in) and says precisely why a
certificate is refused, because "TLS failed" is useless when debugging a proxy that
cannot get its config.
"""

from __future__ import annotations

import enum
from datetime import datetime

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshcp.certs import pem
from meshcp.identity import DEFAULT_TRUST_DOMAIN, ProxyIdentity


class RejectReason(enum.StrEnum):
    MISSING = "missing"
    MALFORMED = "malformed"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    UNTRUSTED = "untrusted"
    NOT_A_SIDECAR = "not-a-sidecar"
    NODE_MISMATCH = "node-mismatch"


class XdsClientRejected(Exception):
    """An xDS client certificate was refused; `reason` is for metrics, the message for people."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"xDS client certificate rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


def _parse(certificate: bytes | str) -> x509.Certificate:
    data = certificate.encode("ascii") if isinstance(certificate, str) else certificate
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise XdsClientRejected(RejectReason.MALFORMED, f"cannot parse the certificate: {exc}") from exc


def _check_trusted(leaf: x509.Certificate, trust_bundle_pem: str, now: datetime) -> None:
    try:
        roots = pem.load_certificates(trust_bundle_pem)
    except ValueError as exc:
        raise XdsClientRejected(RejectReason.UNTRUSTED, f"the trust bundle is unusable: {exc}") from exc
    verifier = PolicyBuilder().store(Store(roots)).time(now).build_client_verifier()
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        raise XdsClientRejected(
            RejectReason.UNTRUSTED, f"not issued by the mesh CA ({leaf.issuer.rfc4514_string()}): {exc}"
        ) from exc


def _proxy_name(leaf: x509.Certificate, trust_domain: str) -> ProxyIdentity:
    names = pem.dns_names(leaf)
    parsed: list[ProxyIdentity] = []
    problems: list[str] = []
    for name in names:
        try:
            parsed.append(ProxyIdentity.parse(name, trust_domain))
        except ValueError as exc:
            problems.append(str(exc))
    if len(parsed) != 1:
        found = f"{len(parsed)} sidecar names" if parsed else "no sidecar name"
        detail = f"; {'; '.join(problems)}" if problems and not parsed else ""
        raise XdsClientRejected(
            RejectReason.NOT_A_SIDECAR,
            f"expected one DNS SAN naming a sidecar, found {found} in {names}{detail}",
        )
    return parsed[0]


def verify_xds_client(
    certificate: bytes | str | None,
    trust_bundle_pem: str,
    now: datetime,
    claimed_node_id: str,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> ProxyIdentity:
    """The identity proven by an xDS client certificate (DER or PEM), or `XdsClientRejected`.

    Checks, in order: present, parseable, valid at `now`, chains to `trust_bundle_pem`
    with client-auth usage, names exactly one sidecar in `trust_domain`, and that name is
    `claimed_node_id`.
    """
    if not certificate:
        raise XdsClientRejected(RejectReason.MISSING, "the client presented no certificate")
    leaf = _parse(certificate)
    if now < leaf.not_valid_before_utc:
        raise XdsClientRejected(
            RejectReason.NOT_YET_VALID,
            f"valid from {leaf.not_valid_before_utc.isoformat()}, now is {now.isoformat()}",
        )
    if now > leaf.not_valid_after_utc:
        raise XdsClientRejected(
            RejectReason.EXPIRED,
            f"expired at {leaf.not_valid_after_utc.isoformat()}, now is {now.isoformat()}",
        )
    _check_trusted(leaf, trust_bundle_pem, now)
    proxy = _proxy_name(leaf, trust_domain)
    if proxy.name != claimed_node_id:
        raise XdsClientRejected(
            RejectReason.NODE_MISMATCH,
            f"certificate is for {proxy.name!r} but the node id is {claimed_node_id!r}",
        )
    return proxy
