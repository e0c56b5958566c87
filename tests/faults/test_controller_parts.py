"""Fault injection: each long-lived part of `meshcp serve` raising. The controller must not
keep serving xDS from a mesh it no longer follows: readiness turns false naming the part,
one log line says why, and `run` ends with `PartFailed` (the CLI exits 1 with that line)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from meshcp.runtime.controller import ControllerRuntime, PartFailed
from meshcp.runtime.settings import Address, Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookstore"
#: Each part, and the object whose `run` it is.
PARTS = {
    "publisher": lambda runtime: runtime.publisher,
    "renewal": lambda runtime: runtime.certificates,
    "trust": lambda runtime: runtime.trust,
    "reconcile": lambda runtime: runtime.rounds,
}


async def meshcp(*args: str) -> tuple[int, str]:
    """`python -m meshcp ARGS` to its end (killed after 60 s): status and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshcp", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def settings(source: Path = EXAMPLE) -> Settings:
    return Settings(xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0), source=source)


@pytest.mark.parametrize("part", sorted(PARTS))
async def test_a_failing_part_ends_the_controller_and_says_which(
    part: str, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await ControllerRuntime.open(settings())
    broken = asyncio.Event()

    async def fails(*args: Any, **kwargs: Any) -> None:
        await broken.wait()
        raise OSError(28, "No space left on device")

    PARTS[part](runtime).run = fails  # the fault: this part's loop raises once triggered
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))

    if part != "reconcile":  # the first round is what makes the controller ready
        await asyncio.wait_for(runtime.readiness.wait(), 30)
    broken.set()
    with caplog.at_level(logging.ERROR, logger="meshcp"), pytest.raises(PartFailed) as failed:
        await asyncio.wait_for(running, 30)
    assert str(failed.value) == f"the controller's {part} stopped: [Errno 28] No space left on device"
    assert not runtime.readiness.ready
    assert f"{part} (failed)" in runtime.readiness.pending
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [str(failed.value)]


async def test_a_missing_source_directory_fails_the_files_part(tmp_path: Path) -> None:
    runtime = await ControllerRuntime.open(settings(tmp_path / "nowhere"))
    with pytest.raises(PartFailed) as failed:
        await asyncio.wait_for(runtime.run(asyncio.Event()), 30)
    assert failed.value.part == "files"
    assert "does not exist or is not a directory" in str(failed.value)


async def test_serve_on_a_missing_directory_exits_1_with_one_line(tmp_path: Path) -> None:
    status, stderr = await meshcp(
        "serve",
        "--source",
        str(tmp_path / "nowhere"),
        "--insecure-xds",
        "--xds-address",
        "127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
        "--debug-address",
        "127.0.0.1:0",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert status == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("meshcp: error: the controller's files stopped: manifest directory"), last
    assert "Traceback" not in stderr


@pytest.mark.parametrize("source", ["nowhere", "file.yaml"])
async def test_compile_on_a_missing_source_ends_with_one_line(tmp_path: Path, source: str) -> None:
    (tmp_path / "file.yaml").write_text("{}\n")
    status, stderr = await meshcp(
        "compile",
        "--source",
        str(tmp_path / source),
        "--pod",
        "bookstore/bookstore-v1-0",
    )
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshcp: error: manifest directory"), lines


async def test_bootstrap_out_naming_a_file_ends_with_one_line(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    status, stderr = await meshcp(
        "bootstrap",
        "--source",
        str(EXAMPLE),
        "--pod",
        "bookstore/bookstore-v1-0",
        "--state-dir",
        str(tmp_path / "state"),
        "--out",
        str(taken),
    )
    assert status == 1
    assert stderr.strip().splitlines() == [f"meshcp: error: --out {taken}: exists and is not a directory"]
    assert taken.read_text() == "mine\n"
