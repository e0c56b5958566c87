"""Fault injection: the CA's state directory full during a root rotation (a small tmpfs
the test mounts, root only). Started on a full disk, `meshcp ca rotate` ends with one line
and writes nothing; full in the middle of a rotation, the controller logs one line, keeps
serving the bundle and certificates it had, and finishes the rotation once space returns.
No key is ever written partly, and no temporary file is left behind."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcp.certs.internal import InternalCA
from meshcp.certs.root_rotation import Phase
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from tests.faults.figures import Stopwatch, record
from tests.faults.sds_proxy import SdsProxy
from tests.faults.test_controller_parts import EXAMPLE, meshcp
from tests.support import eventually

NO_SPACE = os.strerror(errno.ENOSPC)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` for the block (root only)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    with path.open("ab", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def phase(ca: InternalCA) -> Phase:
    """The CA's phase (a call: mypy narrows an attribute across awaits)."""
    return ca.state.phase


def listing(state: Path) -> list[str]:
    return sorted(os.listdir(state))


async def test_a_full_state_directory_during_a_root_rotation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        state = disk / "state"
        settings = Settings(
            xds_address=Address("127.0.0.1", 0),
            http_address=Address("127.0.0.1", 0),
            source=EXAMPLE,
            trust_interval=0.1,
        )
        settings.ca.state_dir = state
        classes: list[str] = []
        runtime = await ControllerRuntime.open(settings, classify=lambda node, identity: classes[0])
        ca = runtime.provider
        assert isinstance(ca, InternalCA)
        async with runtime:

            async def published() -> bool:
                return runtime.readiness.ready and bool(runtime.cache.keys())

            await eventually(published, what="the first round's snapshots")
            classes.append(runtime.cache.keys()[0])
            async with SdsProxy(runtime.xds.port, "prober", auto_ack=False) as proxy:
                await proxy.ack(await proxy.next())
                assert proxy.usable() and len(proxy.roots()) == 1
                files, index = listing(state), (state / "ca-state.json").read_bytes()

                # Full when a rotation starts: one line, nothing written.
                fill(disk / "filler")
                status, stderr = await meshcp("ca", "rotate", "--state-dir", str(state))
                assert status == 1
                (line,) = stderr.strip().splitlines()
                assert line.startswith("meshcp: error: certificate provider 'internal': cannot write root-")
                assert line.endswith(f".key in {state}: {NO_SPACE}")
                assert listing(state) == files and (state / "ca-state.json").read_bytes() == index
                assert ca.state.phase == Phase.STABLE and proxy.usable()

                # Full in the middle of one: the controller cannot commit its next phase.
                (disk / "filler").unlink()
                status, _ = await meshcp("ca", "rotate", "--state-dir", str(state))
                assert status == 0
                trusting = await proxy.next()  # the bundle of both roots (the phase waits for this ACK)
                assert len(proxy.roots()) == 2 and proxy.usable()
                files = listing(state)
                fill(disk / "filler")
                with caplog.at_level(logging.ERROR, "meshcp.runtime.trust"):
                    await proxy.ack(trusting)
                    failed = "trust upkeep: certificate provider 'internal': cannot write ca-state.json"
                    failed += f" in {state}: "

                    async def reported() -> bool:
                        return failed + NO_SPACE in caplog.text

                    await eventually(reported, 10, "the failed commit to be logged")
                assert phase(ca) == Phase.TRUSTING  # not committed, not in force
                assert listing(state) == files  # no partial or temporary file
                assert proxy.usable() and len(proxy.roots()) == 2
                assert runtime.readiness.ready  # the controller goes on: no part failed

                # Space returns: the rotation goes on to its end.
                proxy.auto_ack = True
                clock = Stopwatch()
                (disk / "filler").unlink()

                async def finished() -> bool:
                    return ca.state.phase == Phase.STABLE and len(proxy.roots()) == 1 and proxy.usable()

                await eventually(finished, 20, "the rotation to finish", lambda: str(ca.state.phase))
                record(
                    "state directory full during a root rotation",
                    "rotation finished after space returned",
                    clock(),
                )
                assert [line for line in caplog.text.splitlines() if failed in line][1:] == []  # said once
