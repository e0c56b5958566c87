"""A real `meshcp serve` (mTLS xDS) on a copy of examples/bookstore, with a real Envoy
bootstrapped by `meshcp bootstrap` for one pod: what the commands that ask a running
controller are tested against."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cli.runner import bookstore
from tests.cli.test_main import wait_for_line
from tests.support import eventually
from tests.support.envoy import EnvoyProcess

MESHCP = [sys.executable, "-m", "meshcp"]
POD = "bookstore-v1-0"
TYPES = ("cds", "eds", "lds", "rds", "sds")


async def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """`meshcp ARGS...` as a process: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *MESHCP, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@dataclass
class Mesh:
    state: Path
    debug: str
    envoy: EnvoyProcess
    node_id: str


@contextlib.asynccontextmanager
async def running_mesh(tmp_path: Path, *, delta: bool = False) -> AsyncIterator[Mesh]:
    """`delta`: the proxy speaks incremental ADS (`bootstrap --delta`)."""
    source, state = bookstore(tmp_path), tmp_path / "state"
    controller = await asyncio.create_subprocess_exec(
        *MESHCP,
        "serve",
        "--source",
        str(source),
        "--state-dir",
        str(state),
        "--xds-address",
        "127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
        "--debug-address",
        "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert controller.stderr is not None
        xds = (await wait_for_line(controller.stderr, r"serving xDS on 127\.0\.0\.1:(\d+)"))[1]
        debug = (
            "127.0.0.1:"
            + (await wait_for_line(controller.stderr, r"serving /debug on 127\.0\.0\.1:(\d+)"))[1]
        )
        out = tmp_path / "proxy"
        status, printed, err = await run(
            "bootstrap", POD, "-n", "bookstore", "--source", str(source), "--state-dir", str(state),
            "--out", str(out), "--xds-address", f"127.0.0.1:{xds}", *(["--delta"] if delta else []),
        )  # fmt: skip
        assert status == 0, err
        node_id = re.search(r"for node (\S+)", printed)[1]  # type: ignore[index]
        bootstrap = json.loads((out / "bootstrap.json").read_text())
        bootstrap["admin"]["address"]["socketAddress"]["portValue"] = 0  # EnvoyProcess reads it back
        async with EnvoyProcess(bootstrap) as envoy:
            yield Mesh(state, debug, envoy, node_id)
    finally:
        controller.send_signal(signal.SIGTERM)
        await asyncio.wait_for(controller.wait(), 30)


async def proxy_status(mesh: Mesh) -> list[dict[str, Any]]:
    status, out, err = await run("proxy", "status", "--server", mesh.debug, "-o", "json")
    assert status == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


async def wait_synced(mesh: Mesh) -> None:
    """Until the proxy has ACKed its class's current content of every type."""

    async def all_synced() -> bool:
        rows = await proxy_status(mesh)
        return len(rows) == 1 and all(rows[0][t]["state"] == "SYNCED" for t in TYPES)

    await eventually(all_synced, timeout=60, what="the proxy SYNCED on every type")
