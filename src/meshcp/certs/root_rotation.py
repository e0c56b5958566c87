"""The root rotation state machine, as pure values.

    stable(A) --begin(B)--> trusting(B, A; A signs) --sign_with_new_root--> rotating(B, A; B signs)
              --finish--> stable(B)

While trusting, the bundle holds both roots but the old one still signs, so no proxy is
handed a certificate its peers cannot verify yet; once every proxy has the two-root
bundle, the new root signs and certificates are re-issued. The old root is dropped only
when the server says every proxy holds certificates from the new one (`finish`); a
restart loses nothing, because the state is persisted.

The xDS channel needs more than that: a proxy's bootstrap (its xDS client certificate
and the roots it trusts for the xDS server) is written once and never refreshed. So
beginning a rotation also records a cross certificate (the new root's key, signed by
the old root), and finishing it keeps the old root's certificate as *retired*: no longer
trusted between workloads, still trusted for xDS until it expires.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime

from cryptography import x509

from meshcp.certs import pem
from meshcp.certs.authority import Root, root_id

DEFAULT_ROOT_ROTATION_SHARE = 0.2
"""Rotate the root when less than this share of its validity remains (two years of a
ten-year root): far more than any workload certificate lives, and long enough for an
operator to notice if automatic rotation is failing."""


class Phase(enum.StrEnum):
    """Root rotation: STABLE (one root) → TRUSTING (both trusted, the old one still signs,
    while every proxy receives the two-root bundle) → ROTATING (the new one signs and
    certificates are re-issued) → STABLE (the old root dropped)."""

    STABLE = "stable"
    TRUSTING = "trusting"
    ROTATING = "rotating"


class RotationConflict(Exception):
    """A transition that the current phase does not allow."""


@dataclass(frozen=True, slots=True)
class CrossCertificate:
    """Root `subject_id`'s name and key certified by root `issuer_id` (the one it replaced)."""

    certificate: x509.Certificate
    subject_id: str
    issuer_id: str


@dataclass(frozen=True, slots=True)
class CAState:
    """Which roots exist, which one signs, and what the xDS channel still trusts."""

    active: Root
    previous: Root | None = None
    #: TRUSTING: the previous root still signs until peers trust the new one.
    signing_previous: bool = False
    #: Roots replaced by a finished rotation, newest first: certificates only (their keys
    #: are destroyed), trusted for xDS until they expire.
    retired: tuple[x509.Certificate, ...] = ()
    #: Cross certificates from rotations, newest first.
    crosses: tuple[CrossCertificate, ...] = ()

    @property
    def phase(self) -> Phase:
        if self.previous is None:
            return Phase.STABLE
        return Phase.TRUSTING if self.signing_previous else Phase.ROTATING

    @property
    def signing_root(self) -> Root:
        """The root that signs now: never one that some peer may not trust yet."""
        if self.previous is not None and self.signing_previous:
            return self.previous
        return self.active

    @property
    def roots(self) -> tuple[Root, ...]:
        """Trusted roots, the signing one first."""
        return (self.active,) if self.previous is None else (self.active, self.previous)

    def trust_bundle_pem(self) -> str:
        """Roots workloads trust each other by (SDS): current roots only."""
        return "".join(root.pem for root in self.roots)

    def xds_roots(self, now: datetime) -> tuple[x509.Certificate, ...]:
        """Roots the xDS server accepts client certificates from: the current roots and
        the retired ones not yet expired at `now`."""
        current = tuple(root.certificate for root in self.roots)
        return current + tuple(cert for cert in self.retired if now <= cert.not_valid_after_utc)

    def xds_trust_bundle_pem(self, now: datetime) -> str:
        return pem.to_pem(self.xds_roots(now))

    def cross_chain(self, leaf: x509.Certificate, now: datetime) -> tuple[x509.Certificate, ...]:
        """The cross certificates that lead from the root that signed `leaf` to each older
        root still trusted for xDS at `now`, in chain order (append them to the leaf).

        A peer trusting the signing root stops at it; one trusting only an older root
        walks on through the cross certificates.
        """
        trusted = {root_id(cert): cert for cert in self.xds_roots(now)}
        current = next((rid for rid, cert in trusted.items() if cert.subject == leaf.issuer), None)
        chain: list[x509.Certificate] = []
        visited: set[str] = set()
        while current is not None and current not in visited:
            visited.add(current)
            cross = next(
                (
                    c
                    for c in self.crosses
                    if c.subject_id == current
                    and c.issuer_id in trusted
                    and c.certificate.not_valid_before_utc <= now <= c.certificate.not_valid_after_utc
                ),
                None,
            )
            if cross is None:
                break
            chain.append(cross.certificate)
            current = cross.issuer_id
        return tuple(chain)

    def pruned(self, now: datetime) -> CAState:
        """Forget retired roots that have expired, and cross certificates that lead to a
        root nobody trusts any more; they could verify nothing."""
        retired = tuple(cert for cert in self.retired if now <= cert.not_valid_after_utc)
        ids = {root.id for root in self.roots} | {root_id(cert) for cert in retired}
        crosses = tuple(
            c
            for c in self.crosses
            if c.subject_id in ids and c.issuer_id in ids and now <= c.certificate.not_valid_after_utc
        )
        if retired == self.retired and crosses == self.crosses:
            return self
        return replace(self, retired=retired, crosses=crosses)

    def begin_rotation(self, new_root: Root, cross: x509.Certificate | None = None) -> CAState:
        """Trust `new_root` next to the current one, which keeps signing (TRUSTING).

        `cross` is `new_root` certified by the current root (`authority.cross_sign`).
        """
        if self.previous is not None:
            raise RotationConflict(
                f"a root rotation is already in progress (old root {self.previous.id}, "
                f"new root {self.active.id}): a running controller finishes it once every proxy has "
                "the new root, `meshcp ca finish-rotation` finishes it now"
            )
        if new_root.id == self.active.id:
            raise RotationConflict("the new root is the current root")
        crosses = self.crosses
        if cross is not None:
            crosses = (CrossCertificate(cross, new_root.id, self.active.id), *crosses)
        return replace(self, active=new_root, previous=self.active, signing_previous=True, crosses=crosses)

    def sign_with_new_root(self) -> CAState:
        """TRUSTING → ROTATING, once every proxy trusts the new root (no-op otherwise)."""
        return replace(self, signing_previous=False)

    def finish_rotation(self) -> CAState:
        """Stop trusting the old root between workloads; its certificate is retired (kept
        for xDS only). Finishing when not rotating changes nothing, so the server may call
        this again after a restart without checking first."""
        if self.previous is None:
            return replace(self, signing_previous=False)
        retired = (self.previous.certificate, *self.retired)
        return replace(self, previous=None, signing_previous=False, retired=retired)


def root_rotation_due(
    root: x509.Certificate, now: datetime, share: float = DEFAULT_ROOT_ROTATION_SHARE
) -> bool:
    """Whether less than `share` of the root's validity remains at wall-clock time `now`."""
    if not 0 < share < 1:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    start, end = root.not_valid_before_utc, root.not_valid_after_utc
    return end - now < (end - start) * share
