from __future__ import annotations

import asyncio

import pytest

from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import workload_request, xds_server_request
from meshcp.certs.issuer import Issuer, ReportingIssuer, RetryPolicy
from meshcp.certs.provider import CertificateError, CertificateRequest
from meshcp.certs.rotation import workload_certificates
from meshcp.certs.singleflight import SingleFlight
from meshcp.identity import Identity

from .support import CountingProvider, FakeClock, RecordingSleep, wait_until

IDENTITY = Identity("ns", "sa")
REQUEST = workload_request(IDENTITY)


def unavailable() -> CertificateError:
    return CertificateError("counting", "cannot reach http://127.0.0.1:1: connection refused", retryable=True)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.0)
    assert [policy.delay(n, 0.5) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_backoff_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(initial_delay=10.0, jitter=0.2)
    assert policy.delay(1, 0.0) == pytest.approx(8.0)
    assert policy.delay(1, 0.999999) == pytest.approx(12.0, rel=1e-5)


async def test_retryable_failures_are_retried_with_backoff(internal_ca: InternalCA) -> None:
    provider = CountingProvider(internal_ca)
    provider.failures = [unavailable(), unavailable()]
    sleep = RecordingSleep()
    issuer = Issuer(provider, RetryPolicy(initial_delay=1.0, jitter=0.0), sleep=sleep)
    issued = await issuer.issue(REQUEST)
    assert provider.calls == 3
    assert sleep.delays == [1.0, 2.0]
    assert issued.certificate.issuer == internal_ca.state.active.certificate.subject
    assert issuer.issued == 1


async def test_gives_up_after_the_last_attempt_with_a_clear_error(internal_ca: InternalCA) -> None:
    provider = CountingProvider(internal_ca)
    provider.failures = [unavailable() for _ in range(3)]
    issuer = Issuer(provider, RetryPolicy(attempts=3), sleep=RecordingSleep())
    with pytest.raises(CertificateError) as caught:
        await issuer.issue(REQUEST)
    assert provider.calls == 3
    assert str(caught.value) == (
        "certificate provider 'counting': cannot reach http://127.0.0.1:1: connection refused "
        "(gave up after 3 attempts)"
    )


async def test_refusals_are_not_retried(internal_ca: InternalCA) -> None:
    provider = CountingProvider(internal_ca)
    provider.failures = [CertificateError("counting", "HTTP 403: permission denied")]
    sleep = RecordingSleep()
    with pytest.raises(CertificateError, match="permission denied"):
        await Issuer(provider, sleep=sleep).issue(REQUEST)
    assert provider.calls == 1
    assert sleep.delays == []


async def test_a_hanging_provider_times_out_and_is_retried(internal_ca: InternalCA) -> None:
    provider = CountingProvider(internal_ca)
    provider.gate = asyncio.Event()  # never set: every attempt hangs
    issuer = Issuer(provider, RetryPolicy(attempts=2, attempt_timeout=0.01), sleep=RecordingSleep())
    with pytest.raises(CertificateError, match=r"no certificate within 0\.01s \(gave up after 2 attempts\)"):
        await issuer.issue(REQUEST)
    assert provider.calls == 2


async def test_unexpected_provider_exceptions_become_certificate_errors(internal_ca: InternalCA) -> None:
    provider = CountingProvider(internal_ca)
    provider.failures = [KeyError("oops")]
    with pytest.raises(CertificateError, match=r"'counting': unexpected error: KeyError\('oops'\)"):
        await Issuer(provider, sleep=RecordingSleep()).issue(REQUEST)


async def test_the_reporting_issuer_reports_each_workload_it_issued_for(internal_ca: InternalCA) -> None:
    reported: list[Identity] = []
    issuer = ReportingIssuer(internal_ca, "mesh.example", reported.append)
    dotted = Identity("bookstore", "my.dotted.sa")
    await issuer.issue(workload_request(dotted, "mesh.example"))
    two = CertificateRequest(
        "two", uris=(IDENTITY.spiffe_id("mesh.example"), "spiffe://mesh.example/ns/ns/sa/other")
    )
    await issuer.issue(two)
    assert reported == [dotted, IDENTITY, Identity("ns", "other")]
    assert issuer.issued == 2


async def test_the_reporting_issuer_ignores_what_names_no_workload_of_its_domain(
    internal_ca: InternalCA,
) -> None:
    reported: list[Identity] = []
    issuer = ReportingIssuer(internal_ca, "mesh.example", reported.append)
    await issuer.issue(workload_request(IDENTITY, "other.example"))
    await issuer.issue(xds_server_request(["meshcp.meshcp-system.svc"]))
    await issuer.issue(CertificateRequest("x", uris=("spiffe://mesh.example/ns/a/b/sa/c",)))
    assert reported == []
    assert issuer.issued == 3


async def test_the_reporting_issuer_reports_nothing_when_issuance_fails(internal_ca: InternalCA) -> None:
    provider = CountingProvider(internal_ca)
    provider.failures = [CertificateError("counting", "HTTP 403: permission denied")]
    reported: list[Identity] = []
    issuer = ReportingIssuer(provider, "cluster.local", reported.append, sleep=RecordingSleep())
    with pytest.raises(CertificateError, match="permission denied"):
        await issuer.issue(REQUEST)
    assert reported == []


async def test_concurrent_requests_for_one_identity_make_one_certificate(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    provider = CountingProvider(internal_ca)
    provider.gate = asyncio.Event()
    issuer = Issuer(provider)
    manager = workload_certificates(issuer, clock=clock)
    tasks = [asyncio.create_task(manager.get(IDENTITY)) for _ in range(50)]
    await wait_until(lambda: manager.flights.waiting((IDENTITY, 0)) == 49)
    provider.gate.set()
    results = await asyncio.gather(*tasks)
    assert provider.calls == 1
    assert issuer.issued == 1
    assert len({cert.serial_number for cert in results}) == 1
    assert len({cert.private_key_pem for cert in results}) == 1
    assert await manager.get(IDENTITY) is results[0]  # and later requests reuse it
    assert provider.calls == 1


async def test_different_identities_are_issued_independently(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    provider = CountingProvider(internal_ca)
    manager = workload_certificates(Issuer(provider), clock=clock)
    other = Identity("ns", "other")
    first, second = await asyncio.gather(manager.get(IDENTITY), manager.get(other))
    assert provider.calls == 2
    assert first.serial_number != second.serial_number


async def test_a_shared_failure_reaches_every_waiter(internal_ca: InternalCA, clock: FakeClock) -> None:
    provider = CountingProvider(internal_ca)
    provider.gate = asyncio.Event()
    provider.failures = [CertificateError("counting", "HTTP 400: role not found")]
    manager = workload_certificates(Issuer(provider), clock=clock)
    tasks = [asyncio.create_task(manager.get(IDENTITY)) for _ in range(5)]
    await wait_until(lambda: manager.flights.waiting((IDENTITY, 0)) == 4)
    provider.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert provider.calls == 1
    assert all(isinstance(result, CertificateError) for result in results)


async def test_cancelling_the_first_caller_does_not_fail_the_others() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return calls

    leader = asyncio.create_task(flight.do("k", work))
    await wait_until(lambda: flight.in_flight("k"))
    follower = asyncio.create_task(flight.do("k", work))
    await wait_until(lambda: flight.waiting("k") == 1)
    leader.cancel()
    await wait_until(lambda: calls == 2)  # the follower took over
    release.set()
    assert await follower == 2
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert not flight.in_flight("k")


class Outcomes:
    """An `IssuanceReport` that keeps what it was told."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.failed: list[str] = []
        self.retried: list[str] = []
        self.durations: list[float] = []

    def certificate_issued(self, provider: str, seconds: float) -> None:
        self.issued.append(provider)
        self.durations.append(seconds)

    def certificate_failed(self, provider: str, seconds: float) -> None:
        self.failed.append(provider)
        self.durations.append(seconds)

    def certificate_retried(self, provider: str) -> None:
        self.retried.append(provider)


async def test_each_issuance_reports_its_outcome_once_retries_included(internal_ca: InternalCA) -> None:
    provider = CountingProvider(internal_ca)
    provider.failures = [unavailable(), unavailable()]
    outcomes = Outcomes()
    issuer = Issuer(provider, RetryPolicy(jitter=0.0), sleep=RecordingSleep(), report=outcomes)
    await issuer.issue(REQUEST)  # two retried failures, then a certificate: one issuance
    assert (outcomes.issued, outcomes.failed) == (["counting"], [])
    assert outcomes.retried == ["counting", "counting"]  # each failed attempt, as it happens
    provider.failures = [CertificateError("counting", "HTTP 403: denied")]
    with pytest.raises(CertificateError):
        await issuer.issue(REQUEST)
    assert (outcomes.issued, outcomes.failed) == (["counting"], ["counting"])
    assert len(outcomes.durations) == 2 and all(seconds >= 0 for seconds in outcomes.durations)


async def test_the_reporting_issuer_reports_outcomes_too(internal_ca: InternalCA) -> None:
    outcomes = Outcomes()
    issuer = ReportingIssuer(CountingProvider(internal_ca), "cluster.local", lambda _: None, report=outcomes)
    await issuer.issue(REQUEST)
    assert outcomes.issued == ["counting"]
