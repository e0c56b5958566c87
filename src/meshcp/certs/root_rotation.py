"""The root rotation state machine, as pure values.

    stable(A) --begin(B)--> trusting(B, A; A signs) --sign_with_new_root--> rotating(B, A; B signs)
              --finish--> stable(B)

While trusting, the bundle holds both roots but the old one still signs, so no proxy is
handed a certificate its peers cannot verify yet; once every proxy has the two-root
bundle, the new root signs and certificates are re-issued. The old root is dropped only
when the server says every proxy holds certificates from the new one (`finish`); a
restart loses nothing, because the state is persisted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime

from cryptography import x509

from meshcp.certs.authority import Root

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
class CAState:
    """Which roots exist and which one signs."""

    active: Root
    previous: Root | None = None
    #: TRUSTING: the previous root still signs until peers trust the new one.
    signing_previous: bool = False

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
        return "".join(root.pem for root in self.roots)

    def begin_rotation(self, new_root: Root) -> CAState:
        """Trust `new_root` next to the current one, which keeps signing (TRUSTING)."""
        if self.previous is not None:
            raise RotationConflict(
                f"a root rotation is already in progress (old root {self.previous.id}, "
                f"new root {self.active.id}); finish it first"
            )
        if new_root.id == self.active.id:
            raise RotationConflict("the new root is the current root")
        return CAState(active=new_root, previous=self.active, signing_previous=True)

    def sign_with_new_root(self) -> CAState:
        """TRUSTING → ROTATING, once every proxy trusts the new root (no-op otherwise)."""
        return replace(self, signing_previous=False)

    def finish_rotation(self) -> CAState:
        """Stop trusting the old root. Finishing when not rotating changes nothing, so the
        server may call this again after a restart without checking first."""
        return replace(self, previous=None, signing_previous=False)


def root_rotation_due(
    root: x509.Certificate, now: datetime, share: float = DEFAULT_ROOT_ROTATION_SHARE
) -> bool:
    """Whether less than `share` of the root's validity remains at wall-clock time `now`."""
    if not 0 < share < 1:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    start, end = root.not_valid_before_utc, root.not_valid_after_utc
    return end - now < (end - start) * share
