"""The supervisor's answers on its Unix socket, without a lab: a request that breaks on
something unexpected is answered in one line and stops the lab (needs no root)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

from meshcp.lab.cluster import Lab
from meshcp.lab.network import LabError
from meshcp.lab.supervisor import _answer


class BrokenLab:
    """A lab whose status fails: with a `LabError` (expected) or anything else (a bug)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def status(self) -> dict[str, Any]:
        raise self.error


async def _ask(tmp_path: Path, lab: BrokenLab) -> tuple[dict[str, Any], bool, list[str]]:
    stop = asyncio.Event()
    failures: list[str] = []
    path = str(tmp_path / "control.sock")
    server = await asyncio.start_unix_server(
        lambda r, w: _answer(cast(Lab, lab), r, w, stop, failures), path=path
    )
    async with server:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"op": "status"}\n')
        await writer.drain()
        answer: dict[str, Any] = json.loads(await reader.readline())
        writer.close()
        await writer.wait_closed()
    return answer, stop.is_set(), failures


async def test_an_expected_error_is_answered_and_the_lab_goes_on(tmp_path: Path) -> None:
    answer, stopping, failures = await _ask(tmp_path, BrokenLab(LabError("pod shop/a is not running")))
    assert answer == {"ok": False, "error": "pod shop/a is not running"}
    assert not stopping and failures == []


async def test_an_unexpected_error_is_answered_in_one_line_and_stops_the_lab(tmp_path: Path) -> None:
    broken = BrokenLab(RuntimeError("state went missing\nTraceback (most recent call last): ..."))
    answer, stopping, failures = await _ask(tmp_path, broken)
    reason = "the lab's status request failed: state went missing"
    assert answer == {"ok": False, "error": f"{reason}; the lab is stopping"}
    assert stopping and failures == [reason]
