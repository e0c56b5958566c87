"""Certificate rotation under load between two real Envoys (`tests.support.envoy_pair`):
workload renewals and a whole root rotation while requests flow, and not one fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from meshcp.certs import Identity, InternalCA
from meshcp.certs.setup import CaSettings
from tests.support import eventually
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.envoy_pair import BOOKBUYER, BOOKSTORE, Pair, envoy_pair, get
from tests.support.http import new_connection_per_request
from tests.support.mtls import envoy_sds_roots, envoy_serials, serial_hex

pytestmark = REAL_ENVOY


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: nothing pins a request to an old upstream connection.
    async with new_connection_per_request() as client:
        yield client


@dataclass
class Load:
    """Requests through the client Envoy, back to back, counting what did not get 200."""

    port: int
    expected: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                status, body = await get(session, self.port)
            except (aiohttp.ClientError, TimeoutError) as error:
                self.failures.append(f"{time.monotonic():.3f} {error!r}")
            else:
                if (status, body) == (200, self.expected):
                    self.ok += 1
                else:
                    self.failures.append(f"{time.monotonic():.3f} {status} {body[:200]!r}")
            await asyncio.sleep(0.005)  # pacing, not synchronisation


@dataclass
class Rotation:
    who: str
    serial: str
    issuer: str
    at: float
    seen_by_envoy_after: float | None = None


@dataclass
class RotationWatch:
    """Notices every new workload certificate and waits for its Envoy to present it."""

    pair: Pair
    deadline: float = 10.0
    rotations: list[Rotation] = field(default_factory=list)
    latest: dict[str, Rotation] = field(default_factory=dict)

    def targets(self) -> tuple[tuple[str, Identity, EnvoyProcess], ...]:
        client_envoy, server_envoy = self.pair.envoys
        return (("bookbuyer", BOOKBUYER, client_envoy), ("bookstore", BOOKSTORE, server_envoy))

    async def poll(self) -> None:
        now = time.monotonic()
        for who, identity, envoy in self.targets():
            certificate = self.pair.current(identity)
            serial = serial_hex(certificate)
            last = self.latest.get(who)
            if last is None or last.serial != serial:
                rotation = Rotation(who, serial, certificate.certificate.issuer.rfc4514_string(), now)
                self.latest[who] = rotation
                if last is not None:  # the first one is the starting point, not a rotation
                    self.rotations.append(rotation)
            current = self.latest[who]
            if current.seen_by_envoy_after is None:
                if serial in await envoy_serials(envoy):
                    current.seen_by_envoy_after = time.monotonic() - current.at
                elif now - current.at > self.deadline:
                    raise AssertionError(
                        f"{who}'s Envoy does not present serial {serial} after {self.deadline} s"
                    )

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(0.05)

    def seen(self) -> list[Rotation]:
        """Rotations whose certificate Envoy presented (a later one may supersede one first)."""
        return [r for r in self.rotations if r.seen_by_envoy_after is not None]

    async def all_seen(self) -> bool:
        return all(r.seen_by_envoy_after is not None for r in self.latest.values())


async def test_rotations_under_load_lose_no_request(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """Workload certificates live 30 s and renew every few seconds (the renewal point is
    spread by up to 10 % of the lifetime, which includes the 5 minutes of backdating);
    then a root rotation runs through all its phases, driven by the background trust task.
    Requests flow through both Envoys the whole time; not one may fail."""
    started = time.monotonic()
    ca = CaSettings(validity=timedelta(seconds=30), renew_share=0.01)
    async with envoy_pair(tmp_path, ca, trust_interval=0.2, issue_first=True) as pair:
        provider = pair.runtime.provider
        assert isinstance(provider, InternalCA)
        load = Load(pair.outbound_port, pair.app.name)
        watch = RotationWatch(pair)
        await watch.poll()
        async with asyncio.TaskGroup() as tasks:
            load_task = tasks.create_task(load.run(session))
            watch_task = tasks.create_task(watch.run())
            try:

                async def three_rotations() -> bool:
                    return len(watch.seen()) >= 3

                await eventually(three_rotations, 45, "three workload rotations presented by Envoy")
                workload_rotations = len(watch.rotations)
                old_root = provider.state.active
                requests_before_root = load.ok

                await pair.runtime.trust.rotate()
                new_root = provider.state.active
                assert new_root.id != old_root.id and provider.state.previous is not None

                async def finished() -> bool:
                    return provider.state.previous is None

                await eventually(finished, 20, "the root rotation to finish", details=pair.logs)
                assert pair.runtime.trust.bundle == new_root.pem

                async def on_new_root() -> bool:
                    issuers = {
                        pair.current(identity).certificate.issuer for identity in (BOOKBUYER, BOOKSTORE)
                    }
                    return issuers == {new_root.certificate.subject} and await watch.all_seen()

                await eventually(on_new_root, 10, "both Envoys to present certificates of the new root")
                new_root_serial = format(new_root.certificate.serial_number, "x")

                async def trust_only_the_new_root() -> bool:
                    roots = [await envoy_sds_roots(envoy) for envoy in pair.envoys]
                    return roots == [{new_root_serial}] * 2

                await eventually(trust_only_the_new_root, 10, "both Envoys to trust only the new root")
                ok_at_finish, rotations_at_finish = load.ok, len(watch.rotations)

                async def renewed_after_finish() -> bool:
                    later = watch.rotations[rotations_at_finish:]
                    return load.ok >= ok_at_finish + 100 and any(
                        r.seen_by_envoy_after is not None for r in later
                    )

                await eventually(renewed_after_finish, 40, "a renewal and requests with only the new root")
            finally:
                load_task.cancel()
                watch_task.cancel()

        client_envoy, server_envoy = pair.envoys
        for identity, envoy in ((BOOKBUYER, client_envoy), (BOOKSTORE, server_envoy)):
            assert serial_hex(pair.current(identity)) in await envoy_serials(envoy)
        elapsed = time.monotonic() - started
        seen = watch.seen()
        max_delay = max(r.seen_by_envoy_after or 0 for r in seen)
        print(
            f"\nrotation under load: {load.ok} requests OK, {len(load.failures)} failed in {elapsed:.1f} s; "
            f"{workload_rotations} workload rotations before the root rotation "
            f"({requests_before_root} requests), {len(watch.rotations)} certificate changes in all, "
            f"{len(seen)} presented by Envoy (max delay {max_delay * 1000:.0f} ms); "
            f"root {old_root.id} -> {new_root.id}"
        )
        for rotation in watch.rotations:
            print(
                f"  {rotation.who:9} {rotation.serial} by {rotation.issuer}, in Envoy after "
                f"{(rotation.seen_by_envoy_after or 0) * 1000:.0f} ms"
            )
        assert load.failures == []
        assert load.ok >= 200
        assert workload_rotations >= 3
        assert len(watch.rotations) >= workload_rotations + 3  # root rotation re-issues, then a renewal
        # The root rotation re-issued both identities' certificates from the new root.
        assert {
            r.who for r in watch.rotations if new_root.certificate.subject.rfc4514_string() == r.issuer
        } == {
            "bookbuyer",
            "bookstore",
        }
