from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import workload_request
from meshcp.certs.issuer import Issuer, RetryPolicy
from meshcp.certs.provider import CertificateError, IssuedCertificate
from meshcp.certs.rotation import CertificateManager, RenewalPolicy, workload_certificates
from meshcp.identity import Identity

from .support import START, CountingProvider, FakeClock, RecordingSleep, wait_until

IDENTITY = Identity("ns", "sa")
OTHER = Identity("ns", "other")
DAY = timedelta(hours=24)


def test_renewal_point_without_jitter_is_at_30_percent_remaining() -> None:
    policy = RenewalPolicy(renew_share=0.3, jitter_share=0.0)
    assert policy.renew_at(START, START + DAY, 0.7) == START + DAY * 0.7


def test_jitter_only_moves_renewal_earlier() -> None:
    policy = RenewalPolicy(renew_share=0.3, jitter_share=0.1)
    assert policy.renew_at(START, START + DAY, 0.0) == START + DAY * 0.7
    assert policy.renew_at(START, START + DAY, 1.0) == START + DAY * 0.6
    assert START + DAY * 0.6 < policy.renew_at(START, START + DAY, 0.5) < START + DAY * 0.7


@pytest.mark.parametrize(("share", "jitter"), [(0.0, 0.1), (1.0, 0.0), (0.6, 0.5), (0.3, -0.1)])
def test_renewal_policy_rejects_nonsense(share: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="renew_share"):
        RenewalPolicy(share, jitter)


async def test_due_follows_the_injected_wall_clock(internal_ca: InternalCA, clock: FakeClock) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY))
    policy = RenewalPolicy()
    renew_at = policy.renew_at_for(issued)
    lifetime = issued.lifetime
    assert issued.not_after - lifetime * 0.4 <= renew_at <= issued.not_after - lifetime * 0.3
    assert renew_at == policy.renew_at_for(issued)  # stable: derived from the serial
    clock.now = renew_at - timedelta(seconds=1)
    assert not policy.due(issued, clock.now)
    clock.now = renew_at
    assert policy.due(issued, clock.now)


async def test_jitter_spreads_certificates_issued_together(internal_ca: InternalCA) -> None:
    certs = [await internal_ca.issue(workload_request(IDENTITY)) for _ in range(10)]
    assert len({RenewalPolicy().renew_at_for(cert) for cert in certs}) == 10


class Rotations:
    def __init__(self) -> None:
        self.seen: list[tuple[Identity, IssuedCertificate]] = []

    async def __call__(self, identity: Identity, cert: IssuedCertificate) -> None:
        self.seen.append((identity, cert))


def manager_for(
    ca: InternalCA, clock: FakeClock, on_rotated: Rotations, sleep: RecordingSleep | None = None
) -> tuple[CertificateManager[Identity], CountingProvider]:
    provider = CountingProvider(ca)
    issuer = Issuer(provider, RetryPolicy(attempts=1), sleep=RecordingSleep())
    manager = workload_certificates(
        issuer, clock=clock, on_rotated=on_rotated, sleep=sleep or RecordingSleep(), validity=DAY
    )
    return manager, provider


async def test_manager_renews_only_what_is_due_and_notifies(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    rotations = Rotations()
    manager, provider = manager_for(internal_ca, clock, rotations)
    first = await manager.get(IDENTITY)
    clock.advance(timedelta(hours=6))
    other = await manager.get(OTHER)
    assert rotations.seen == []  # first issuance is not a rotation

    clock.now = RenewalPolicy().renew_at_for(first)
    report = await manager.renew_due()
    assert report.renewed == [IDENTITY]
    assert provider.calls == 3
    renewed = manager.current(IDENTITY)
    assert renewed is not None
    assert renewed.serial_number != first.serial_number
    assert rotations.seen == [(IDENTITY, renewed)]
    assert manager.current(OTHER) is other
    assert (await manager.renew_due()).renewed == []


async def test_get_renews_a_due_certificate(internal_ca: InternalCA, clock: FakeClock) -> None:
    rotations = Rotations()
    manager, _ = manager_for(internal_ca, clock, rotations)
    first = await manager.get(IDENTITY)
    clock.now = first.not_after - timedelta(minutes=1)
    second = await manager.get(IDENTITY)
    assert second.serial_number != first.serial_number
    assert rotations.seen == [(IDENTITY, second)]


async def test_failed_renewal_keeps_the_old_certificate_and_backs_off(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    rotations = Rotations()
    manager, provider = manager_for(internal_ca, clock, rotations)
    first = await manager.get(IDENTITY)
    clock.now = RenewalPolicy().renew_at_for(first)
    provider.failures = [CertificateError("counting", "HTTP 503: sealed", retryable=True)]
    report = await manager.renew_due()
    assert list(report.failed) == [IDENTITY]
    assert "sealed" in str(report.failed[IDENTITY])
    assert manager.current(IDENTITY) is first
    # not retried in a tight loop: the next attempt waits for the retry interval
    calls = provider.calls
    assert (await manager.renew_due()).renewed == []
    assert provider.calls == calls
    wakeup = manager.next_wakeup()
    assert wakeup is not None
    assert wakeup > clock.now


async def test_get_returns_the_old_certificate_while_renewal_fails(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    manager, provider = manager_for(internal_ca, clock, Rotations())
    first = await manager.get(IDENTITY)
    clock.now = first.not_after - timedelta(minutes=1)
    provider.failures = [CertificateError("counting", "HTTP 503: sealed", retryable=True)]
    assert await manager.get(IDENTITY) is first
    clock.now = first.not_after + timedelta(seconds=1)
    provider.failures = [CertificateError("counting", "HTTP 503: sealed", retryable=True)]
    with pytest.raises(CertificateError, match="sealed"):
        await manager.get(IDENTITY)


async def test_run_loop_renews_by_the_wall_clock(internal_ca: InternalCA, clock: FakeClock) -> None:
    rotations = Rotations()
    sleep = RecordingSleep(clock)
    manager, _ = manager_for(internal_ca, clock, rotations, sleep)
    first = await manager.get(IDENTITY)
    renew_at = RenewalPolicy().renew_at_for(first)

    task = asyncio.create_task(manager.run())
    try:
        await wait_until(lambda: bool(rotations.seen), steps=100_000)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rotations.seen[0][0] == IDENTITY
    assert clock.now >= renew_at
    assert clock.now < renew_at + timedelta(minutes=1)
    assert max(sleep.delays) <= 60  # never one long sleep: the wall clock is re-read every minute


async def test_a_clock_jump_is_noticed_within_one_wait(internal_ca: InternalCA, clock: FakeClock) -> None:
    rotations = Rotations()
    manager, _ = manager_for(internal_ca, clock, rotations)
    first = await manager.get(IDENTITY)
    clock.now = first.not_after  # e.g. the host was suspended for a day
    await manager.renew_due()
    assert [identity for identity, _ in rotations.seen] == [IDENTITY]


async def test_renew_all_reissues_from_the_new_root(internal_ca: InternalCA, clock: FakeClock) -> None:
    rotations = Rotations()
    manager, _ = manager_for(internal_ca, clock, rotations)
    await manager.get(IDENTITY)
    await manager.get(OTHER)
    await internal_ca.rotate_root()
    state = await internal_ca.sign_with_new_root()
    report = await manager.renew_all()
    assert sorted(report.renewed) == sorted([IDENTITY, OTHER])
    for identity in (IDENTITY, OTHER):
        cert = manager.current(identity)
        assert cert is not None
        assert cert.certificate.issuer == state.active.certificate.subject
    assert sorted(identity for identity, _ in rotations.seen) == sorted([IDENTITY, OTHER])


async def test_identities_left_on_the_old_root_are_renewed_on_the_next_pass(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    manager, provider = manager_for(internal_ca, clock, Rotations())
    await manager.get(IDENTITY)
    await internal_ca.rotate_root()
    state = await internal_ca.sign_with_new_root()
    provider.failures = [CertificateError("counting", "HTTP 503: busy", retryable=True)]
    assert list((await manager.renew_all()).failed) == [IDENTITY]
    clock.advance(timedelta(minutes=1))
    assert (await manager.renew_due()).renewed == [IDENTITY]
    cert = manager.current(IDENTITY)
    assert cert is not None
    assert cert.certificate.issuer == state.active.certificate.subject


async def test_forget_stops_renewal(internal_ca: InternalCA, clock: FakeClock) -> None:
    manager, provider = manager_for(internal_ca, clock, Rotations())
    first = await manager.get(IDENTITY)
    manager.forget(IDENTITY)
    clock.now = first.not_after
    assert (await manager.renew_due()).renewed == []
    assert manager.keys() == []
    assert provider.calls == 1


async def test_a_failing_callback_does_not_stop_renewal(internal_ca: InternalCA, clock: FakeClock) -> None:
    async def broken(identity: Identity, cert: IssuedCertificate) -> None:
        raise RuntimeError("push failed")

    manager = workload_certificates(Issuer(CountingProvider(internal_ca)), clock=clock, on_rotated=broken)
    first = await manager.get(IDENTITY)
    clock.now = first.not_after
    assert (await manager.renew_due()).renewed == [IDENTITY]
    assert manager.current(IDENTITY) is not first


async def test_a_certificate_shorter_than_its_back_dating_is_not_renewed_in_a_loop(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    """The CA back-dates certificates by 5 minutes against clock skew; measured from
    there, a 60-second certificate was due on arrival and renewed over and over."""
    provider = CountingProvider(internal_ca)
    issuer = Issuer(provider, RetryPolicy(attempts=1), sleep=RecordingSleep())
    manager = workload_certificates(
        issuer, clock=clock, sleep=RecordingSleep(), validity=timedelta(seconds=60)
    )
    first = await manager.get(IDENTITY)
    assert (first.not_after - first.not_before) > timedelta(minutes=5)  # back-dated
    assert (await manager.renew_due()).renewed == []
    wakeup = manager.next_wakeup()
    assert wakeup is not None
    # Renewed when 30-40 % of the 60 s it was issued for remain, not at once.
    assert clock.now + timedelta(seconds=36) <= wakeup <= clock.now + timedelta(seconds=42)
    clock.now = wakeup
    assert (await manager.renew_due()).renewed == [IDENTITY]
    assert provider.calls == 2
