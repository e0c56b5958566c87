"""The GC freeze is the `meshcp serve` process's policy, bounded by rounds and by time; a
controller embedded in tests or benchmarks never freezes the process's garbage."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.gc_freeze import GcFreeze
from meshcp.runtime.settings import Address, Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookstore"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.now = 0.0


def policy(recorder: Recorder, rounds: int = 3, seconds: float = 100.0) -> GcFreeze:
    return GcFreeze(
        rounds,
        seconds,
        clock=lambda: recorder.now,
        freeze=lambda: recorder.calls.append("freeze"),
        unfreeze=lambda: recorder.calls.append("thaw"),
    )


def test_rounds_freeze_and_every_nth_thaws() -> None:
    recorder = Recorder()
    freeze = policy(recorder)
    for _ in range(6):
        freeze.after_round()
    assert recorder.calls == ["freeze", "freeze", "thaw", "freeze", "freeze", "thaw"]


def test_a_quiet_mesh_is_thawed_on_time() -> None:
    recorder = Recorder()
    freeze = policy(recorder)
    freeze.after_round()
    recorder.now = 99.0
    freeze.tick()
    assert recorder.calls == ["freeze"]
    recorder.now = 100.0
    freeze.tick()
    assert recorder.calls == ["freeze", "thaw"]
    assert freeze.thaws == 1
    # A round long after the last thaw thaws too, whatever the count.
    recorder.now = 250.0
    freeze.after_round()
    assert recorder.calls[-1] == "thaw"


async def test_an_embedded_controller_freezes_nothing() -> None:
    gc.unfreeze()
    settings = Settings(
        xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0), source=EXAMPLE
    )
    runtime = await ControllerRuntime.open(settings)
    async with runtime:
        await asyncio.wait_for(runtime.readiness.wait(), 30)
        assert gc.get_freeze_count() == 0
