"""Asking a provider for a certificate, with retries that never stall the mesh.

An external CA may be restarting or briefly unreachable; a short outage should cost a
few retries, not a failed rollout. Retries back off exponentially with jitter (so many
identities failing together do not retry in lockstep), each attempt has a deadline (a CA
that hangs is treated like one that is down), and the sleep and randomness are injected
so tests run instantly. Retrying happens in the caller's task: one identity waiting for
its certificate delays nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from meshcp.certs.provider import CertificateError, CertificateProvider, CertificateRequest, IssuedCertificate
from meshcp.identity import Identity

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a failed issuance."""

    attempts: int = 5
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2
    """Each delay is scaled by a random factor in [1 - jitter, 1 + jitter]."""
    attempt_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1 or self.attempt_timeout <= 0:
            raise ValueError("delays and timeout must be positive and the multiplier at least 1")

    def delay(self, failures: int, unit_random: float) -> float:
        """Seconds to wait after the `failures`-th failure (1-based), `unit_random` in [0, 1)."""
        base = min(self.initial_delay * self.multiplier ** (failures - 1), self.max_delay)
        return base * (1 - self.jitter + 2 * self.jitter * unit_random)


class IssuanceReport(Protocol):
    """Told of each issuance's outcome (the controller's metrics; `certs` imports none)."""

    def certificate_issued(self, provider: str, seconds: float) -> None:
        """A certificate came back after `seconds` (retries included)."""

    def certificate_failed(self, provider: str, seconds: float) -> None:
        """Issuance failed for good after `seconds`."""

    def certificate_retried(self, provider: str) -> None:
        """An attempt failed and will be retried: a CA that is down shows from its first
        failed attempt, not only once an issuance gives up."""


class Issuer:
    """A provider with retries: the only way the rest of `certs` asks for a certificate."""

    def __init__(
        self,
        provider: CertificateProvider,
        retry: RetryPolicy | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        unit_random: Callable[[], float] = random.random,
        report: IssuanceReport | None = None,
    ) -> None:
        self._provider = provider
        self._report = report
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._random = unit_random
        self.issued = 0
        """Certificates issued so far (each successful provider call counts once)."""

    @property
    def provider(self) -> CertificateProvider:
        return self._provider

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        """Issue a certificate, retrying retryable failures; raises `CertificateError`.
        The outcome and its duration go to `report`."""
        started = time.perf_counter()
        try:
            issued = await self._issue(request)
        except CertificateError:
            if self._report is not None:
                self._report.certificate_failed(self._provider.name, time.perf_counter() - started)
            raise
        if self._report is not None:
            self._report.certificate_issued(self._provider.name, time.perf_counter() - started)
        return issued

    async def _issue(self, request: CertificateRequest) -> IssuedCertificate:
        policy = self._retry
        for attempt in range(1, policy.attempts + 1):
            try:
                issued = await self._attempt(request)
            except CertificateError as exc:
                if not exc.retryable:
                    raise
                if attempt == policy.attempts:
                    raise CertificateError(
                        exc.provider, f"{exc.message} (gave up after {attempt} attempts)", retryable=True
                    ) from exc
                delay = policy.delay(attempt, self._random())
                log.warning("%s; retrying in %.1fs (attempt %d of %d)", exc, delay, attempt, policy.attempts)
                if self._report is not None:
                    self._report.certificate_retried(self._provider.name)
                await self._sleep(delay)
            else:
                self.issued += 1
                return issued
        raise AssertionError("unreachable: the loop returns or raises")

    async def _attempt(self, request: CertificateRequest) -> IssuedCertificate:
        name = self._provider.name
        timeout = self._retry.attempt_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._provider.issue(request)
        except CertificateError:
            raise
        except TimeoutError as exc:
            raise CertificateError(name, f"no certificate within {timeout:g}s", retryable=True) from exc
        except Exception as exc:
            # A provider bug: keep the traceback for developers, give users one line.
            log.debug("provider %s raised unexpectedly", name, exc_info=True)
            raise CertificateError(name, f"unexpected error: {exc!r}") from exc


class ReportingIssuer(Issuer):
    """An `Issuer` that reports each workload identity it issued a certificate for.

    A `CertificateManager` installs a certificate as soon as it is issued, and reports to
    `on_rotated` only replacements; reporting here, from the SPIFFE URI SANs of each
    request, lets first issuances reach an "installed at" metric too. URIs that name no
    workload of `trust_domain` are not reported.
    """

    def __init__(
        self,
        provider: CertificateProvider,
        trust_domain: str,
        on_issued: Callable[[Identity], None],
        retry: RetryPolicy | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        unit_random: Callable[[], float] = random.random,
        report: IssuanceReport | None = None,
    ) -> None:
        super().__init__(provider, retry, sleep=sleep, unit_random=unit_random, report=report)
        self._trust_domain = trust_domain
        self._on_issued = on_issued

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        issued = await super().issue(request)
        for uri in request.uris:
            try:
                identity = Identity.from_spiffe_id(uri, self._trust_domain)
            except ValueError:
                continue
            self._on_issued(identity)
        return issued
