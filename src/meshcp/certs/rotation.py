"""Keeping certificates fresh: when to renew, and the manager that does it.

A certificate is renewed once less than `renew_share` of its lifetime remains; the exact
point is spread a little earlier per certificate (jitter) so that certificates issued
together do not all renew in the same second. Every decision reads the wall clock and the
times in the certificate, and the manager's loop only ever sleeps a bounded time before
looking again, so suspend/resume or a clock correction is noticed within `max_wait`
instead of being baked into one long monotonic sleep (the bug OSM shipped).

The old certificate is not revoked on renewal: proxies still holding it keep working
until it expires or they receive the new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypedDict, TypeVar, Unpack

from meshcp.certs.clock import Clock, utc_now
from meshcp.certs.issuance import workload_request
from meshcp.certs.issuer import Issuer, Sleep
from meshcp.certs.keys import KeySpec
from meshcp.certs.provider import (
    DEFAULT_WORKLOAD_VALIDITY,
    CertificateError,
    CertificateRequest,
    IssuedCertificate,
)
from meshcp.certs.singleflight import SingleFlight
from meshcp.identity import DEFAULT_TRUST_DOMAIN, Identity

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """When a certificate is due for renewal.

    Renewal happens when less than `renew_share` of the lifetime remains, or earlier by up
    to `jitter_share` of the lifetime; never later.
    """

    renew_share: float = 0.3
    jitter_share: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.renew_share < 1 or self.jitter_share < 0 or self.renew_share + self.jitter_share >= 1:
            raise ValueError("need 0 < renew_share, 0 <= jitter_share and renew_share + jitter_share < 1")

    def renew_at(self, not_before: datetime, not_after: datetime, unit_random: float) -> datetime:
        """The wall-clock time to renew a certificate valid from `not_before` to `not_after`."""
        lifetime = not_after - not_before
        return not_after - lifetime * (self.renew_share + self.jitter_share * unit_random)

    def renew_at_for(self, certificate: IssuedCertificate) -> datetime:
        """`renew_at` with the jitter derived from the serial number: stable across restarts
        and replicas, so the decision for one certificate never flaps."""
        return self.renew_at(certificate.not_before, certificate.not_after, _unit_from_serial(certificate))

    def due(self, certificate: IssuedCertificate, now: datetime) -> bool:
        return now >= self.renew_at_for(certificate)

    def renew_at_obtained(self, certificate: IssuedCertificate, obtained: datetime | None) -> datetime:
        """`renew_at_for`, unless the certificate was due the moment it was `obtained`:
        CAs back-date `not_before` against clock skew (ours by 5 minutes, cfssl by an
        hour), so a certificate living a few minutes is due on arrival and would be renewed
        in a loop; its lifetime is then measured from `obtained` (None: not known)."""
        due_at = self.renew_at_for(certificate)
        if obtained is not None and due_at <= obtained < certificate.not_after:
            return self.renew_at(obtained, certificate.not_after, _unit_from_serial(certificate))
        return due_at


def _unit_from_serial(certificate: IssuedCertificate) -> float:
    serial = certificate.serial_number
    digest = hashlib.sha256(serial.to_bytes((serial.bit_length() + 7) // 8 or 1, "big")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


OnRotated = Callable[[K, IssuedCertificate], Awaitable[None]]


@dataclass(slots=True)
class _Entry:
    certificate: IssuedCertificate
    generation: int
    #: When this manager got it. CAs back-date `not_before` against clock skew (ours by
    #: 5 minutes, cfssl by an hour): measured from there, a certificate living a few
    #: minutes is due the moment it arrives, and was renewed in a loop.
    obtained: datetime


class ManagerOptions(TypedDict, Generic[K], total=False):
    """The keyword options of `CertificateManager`, for factories that pass them through
    (`workload_certificates`); the defaults are the manager's."""

    policy: RenewalPolicy | None
    on_rotated: OnRotated[K] | None
    clock: Clock
    sleep: Sleep
    max_wait: timedelta
    retry_interval: timedelta
    concurrency: int


@dataclass(slots=True)
class RenewalReport(Generic[K]):
    """Outcome of one renewal pass."""

    renewed: list[K] = field(default_factory=list)
    failed: dict[K, CertificateError] = field(default_factory=dict)


class CertificateManager(Generic[K]):
    """Holds one current certificate per key (for workloads: per identity) and renews them.

    `get` issues on first use; concurrent `get`s for one key share one issuance. `run`
    renews certificates as they come due and reports each replacement to `on_rotated`, so
    the server can push to the proxies of that key only. A failed renewal keeps the old
    certificate in service and is retried after `retry_interval`.
    """

    def __init__(
        self,
        issuer: Issuer,
        request_for: Callable[[K], CertificateRequest],
        *,
        policy: RenewalPolicy | None = None,
        on_rotated: OnRotated[K] | None = None,
        clock: Clock = utc_now,
        sleep: Sleep = asyncio.sleep,
        max_wait: timedelta = timedelta(minutes=1),
        retry_interval: timedelta = timedelta(seconds=30),
        concurrency: int = 16,
    ) -> None:
        self._issuer = issuer
        self._request_for = request_for
        self._policy = policy or RenewalPolicy()
        self._on_rotated = on_rotated
        self._clock = clock
        self._sleep = sleep
        self._max_wait = max_wait
        self._retry_interval = retry_interval
        self._limit = asyncio.Semaphore(concurrency)
        self._entries: dict[K, _Entry] = {}
        self._retry_after: dict[K, datetime] = {}
        self._flights: SingleFlight[tuple[K, int], IssuedCertificate] = SingleFlight()
        # Bumped by renew_all: issuances started before it are not joined by later
        # requests, so no certificate from an old root survives a root rotation.
        self._generation = 0
        # Set when a certificate is stored or a renewal failed: `run` recomputes its next
        # wake-up, so a certificate issued while it sleeps is renewed on time, and a
        # renewal that failed outside `run` (`renew_all`, for a root rotation) is retried
        # after `retry_interval`, not after `max_wait`.
        self._stored = asyncio.Event()

    @property
    def flights(self) -> SingleFlight[tuple[K, int], IssuedCertificate]:
        """The in-flight issuances, keyed by (key, generation); for metrics and tests."""
        return self._flights

    @property
    def generation(self) -> int:
        return self._generation

    def current(self, key: K) -> IssuedCertificate | None:
        """The certificate in service for `key`, without issuing."""
        entry = self._entries.get(key)
        return None if entry is None else entry.certificate

    def keys(self) -> list[K]:
        return list(self._entries)

    def forget(self, key: K) -> None:
        """Stop renewing `key` (its workloads are gone)."""
        self._entries.pop(key, None)
        self._retry_after.pop(key, None)

    async def get(self, key: K) -> IssuedCertificate:
        """The current certificate for `key`, issuing or renewing it if needed.

        If renewal fails while the old certificate is still valid, the old one is returned.
        """
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and self._due_at(entry) > now:
            return entry.certificate
        try:
            return await self._issue(key, self._generation)
        except CertificateError as exc:
            if entry is not None and now < entry.certificate.not_after:
                log.warning("renewing the certificate for %s failed, keeping the current one: %s", key, exc)
                return entry.certificate
            raise

    async def renew_due(self) -> RenewalReport[K]:
        """Renew every certificate that is due; failures are reported, not raised."""
        now = self._clock()
        due = [key for key, entry in self._entries.items() if self._wakeup(key, entry) <= now]
        return await self._renew(due, self._generation)

    async def renew_all(self) -> RenewalReport[K]:
        """Re-issue every certificate now, e.g. after the root changed."""
        self._generation += 1
        return await self._renew(list(self._entries), self._generation)

    def next_wakeup(self) -> datetime | None:
        """When the next renewal is due (or may be retried), by the wall clock."""
        return min((self._wakeup(key, entry) for key, entry in self._entries.items()), default=None)

    def _due_at(self, entry: _Entry) -> datetime:
        if entry.generation < self._generation:
            return entry.certificate.not_before  # left over from before renew_all: due now
        return self._policy.renew_at_obtained(entry.certificate, entry.obtained)

    def _wakeup(self, key: K, entry: _Entry) -> datetime:
        due_at = self._due_at(entry)
        retry_after = self._retry_after.get(key)
        return due_at if retry_after is None else max(due_at, retry_after)

    async def run(self) -> None:
        """Renew certificates as they come due, until cancelled."""
        while True:
            report = await self.renew_due()
            for key, error in report.failed.items():
                log.warning("could not renew the certificate for %s: %s", key, error)
            self._stored.clear()
            await self._wait(self._seconds_to_wait())

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a certificate is stored meanwhile."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        stored = asyncio.ensure_future(self._stored.wait())
        try:
            await asyncio.wait((sleeper, stored), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stored.cancel()

    def _seconds_to_wait(self) -> float:
        wakeup = self.next_wakeup()
        limit = self._max_wait.total_seconds()
        if wakeup is None:
            return limit
        return min(max((wakeup - self._clock()).total_seconds(), 0.0), limit)

    async def _renew(self, keys: list[K], generation: int) -> RenewalReport[K]:
        report: RenewalReport[K] = RenewalReport()

        async def renew(key: K) -> None:
            async with self._limit:
                try:
                    await self._issue(key, generation)
                except CertificateError as exc:
                    report.failed[key] = exc
                    self._retry_after[key] = self._clock() + self._retry_interval
                    self._stored.set()
                else:
                    report.renewed.append(key)

        async with asyncio.TaskGroup() as group:
            for key in keys:
                group.create_task(renew(key))
        return report

    async def _issue(self, key: K, generation: int) -> IssuedCertificate:
        async def issue() -> IssuedCertificate:
            certificate = await self._issuer.issue(self._request_for(key))
            await self._store(key, certificate, generation)
            return certificate

        return await self._flights.do((key, generation), issue)

    async def _store(self, key: K, certificate: IssuedCertificate, generation: int) -> None:
        previous = self._entries.get(key)
        if previous is not None and previous.generation > generation:
            return  # a newer generation already replaced it; this one is stale
        self._entries[key] = _Entry(certificate, generation, self._clock())
        self._retry_after.pop(key, None)
        self._stored.set()
        if previous is not None and self._on_rotated is not None:
            try:
                await self._on_rotated(key, certificate)
            except Exception:
                log.exception("on_rotated callback failed for %s", key)


def workload_certificates(
    issuer: Issuer,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    *,
    validity: timedelta = DEFAULT_WORKLOAD_VALIDITY,
    key_spec: KeySpec = KeySpec.ECDSA_P256,
    validity_of: Callable[[], timedelta] | None = None,
    **options: Unpack[ManagerOptions[Identity]],
) -> CertificateManager[Identity]:
    """A manager of workload certificates, one per service account. `validity_of`, when
    given, is asked at each issuance (MeshConfig's `certValidity` can change at run time);
    `options` go to the `CertificateManager`."""

    def request_for(identity: Identity) -> CertificateRequest:
        lifetime = validity_of() if validity_of is not None else validity
        return workload_request(identity, trust_domain, validity=lifetime, key_spec=key_spec)

    return CertificateManager(issuer, request_for, **options)
