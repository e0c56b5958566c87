"""`meshcp proxy status|config`, `meshcp version` and `meshcp ca show` against a real
`meshcp serve` (mTLS xDS) and a real Envoy bootstrapped by `meshcp bootstrap`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshcp import __version__
from meshcp.cli.operate import sync_state
from tests.cli.runner import bookstore
from tests.cli.test_main import wait_for_line
from tests.support import eventually
from tests.support.envoy import REAL_ENVOY, EnvoyProcess

MESHCP = [sys.executable, "-m", "meshcp"]
POD = "bookstore-v1-0"
TYPES = ("cds", "eds", "lds", "rds", "sds")


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *MESHCP, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
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


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
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
            "--out", str(out), "--xds-address", f"127.0.0.1:{xds}",
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


async def _status(mesh: Mesh) -> list[dict[str, Any]]:
    status, out, err = await run("proxy", "status", "--server", mesh.debug, "-o", "json")
    assert status == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


async def _synced(mesh: Mesh) -> None:
    async def all_synced() -> bool:
        rows = await _status(mesh)
        return len(rows) == 1 and all(rows[0][t]["state"] == "SYNCED" for t in TYPES)

    await eventually(all_synced, timeout=60, what="the proxy SYNCED on every type")


pytestmark = REAL_ENVOY


async def test_proxy_status_config_and_version(mesh: Mesh) -> None:
    await _synced(mesh)
    [row] = await _status(mesh)
    assert (row["pod"], row["node_id"], row["identity"]) == (
        f"bookstore/{POD}",
        mesh.node_id,
        "bookstore/bookstore",
    )
    for short in TYPES:
        assert row[short]["version_acked"] == row[short]["version_current"]

    status, table, _ = await run("proxy", "status", "-n", "bookstore", "--server", mesh.debug)
    assert status == 0
    header, line = table.splitlines()
    assert header.split() == ["POD", "IDENTITY", "STREAM", "CDS", "EDS", "LDS", "RDS", "SDS"]
    assert line.split()[:3] == [f"bookstore/{POD}", "bookstore/bookstore", "sotw"]
    assert line.count("SYNCED") == 5
    status, other, _ = await run("proxy", "status", "-n", "bookbuyer", "--server", mesh.debug, "-o", "yaml")
    assert (status, other) == (0, "[]\n")

    status, out, err = await run("proxy", "config", POD, "-n", "bookstore", "--server", mesh.debug)
    assert status == 0, err
    config = json.loads(out)
    assert config["node_id"] == mesh.node_id
    assert {s["name"] for s in config["secrets"]} == {"service-cert", "root-cert"}
    assert "PRIVATE KEY" not in out
    assert config["clusters"] and config["listeners"] and config["routes"] and config["endpoints"]

    envoy = mesh.envoy.admin_url
    status, out, err = await run(
        "proxy", "config", f"bookstore/{POD}", "--type", "secrets", "--envoy", envoy, "--server", mesh.debug
    )
    assert status == 0, err
    shown = json.loads(out)
    assert set(shown) == {"pod", "node_id", "class", "secrets", "drift"}
    assert shown["drift"] == {"secrets": {"only_sent": [], "only_in_envoy": []}}
    assert "PRIVATE KEY" not in out

    status, out, err = await run(
        "proxy", "config", POD, "-n", "bookstore", "--type", "clusters", "-o", "table", "--envoy", envoy,
        "--server", mesh.debug,
    )  # fmt: skip
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "NAME", "VERSION", "IN", "ENVOY"]
    assert len(lines) > 1 and all(
        line.split()[0] == "clusters" and line.endswith("yes") for line in lines[1:]
    )

    status, out, err = await run("proxy", "config", "nobody", "-n", "bookstore", "--server", mesh.debug)
    assert (status, out) == (1, "")
    assert (
        err
        == f"meshcp: error: no proxy of pod bookstore/nobody is connected to the controller at {mesh.debug}\n"
    )

    status, out, _ = await run("version", "--server", mesh.debug)
    assert (status, out) == (0, f"client: {__version__}\nserver: {__version__}\n")


async def test_ca_show_names_the_proxies_a_rotation_waits_for(mesh: Mesh) -> None:
    await _synced(mesh)
    state, server = str(mesh.state), mesh.debug
    status, out, err = await run("ca", "show", "--state-dir", state, "--server", server, "-o", "json")
    assert status == 0, err
    shown = json.loads(out)
    assert shown["phase"] == "stable"
    assert shown["controller"]["phase"] == "stable"
    assert shown["controller"]["lagging_proxies"] == []

    pid = mesh.envoy.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # connected, but ACKs nothing: a laggard
    try:
        status, out, err = await run("ca", "rotate", "--state-dir", state, "--server", server)
        assert status == 0, err
        assert "phase: trusting" in out

        async def lagging() -> bool:
            _, out, _ = await run("ca", "show", "--state-dir", state, "--server", server, "-o", "json")
            controller: dict[str, Any] = json.loads(out)["controller"]
            return bool(controller["phase"] == "trusting" and controller["lagging_proxies"] == [mesh.node_id])

        await eventually(lagging, timeout=60, what="the controller naming the stopped proxy")
        status, text, _ = await run("ca", "show", "--state-dir", state, "--server", server)
        assert status == 0
        assert f"controller: {server}, phase trusting" in text
        assert "proxies to ACK their secrets:" in text
        assert f"    {mesh.node_id}" in text.splitlines()
        assert "previous root:" in text
    finally:
        os.kill(pid, signal.SIGCONT)

    async def finished() -> bool:
        _, out, _ = await run("ca", "show", "--state-dir", state, "--server", server, "-o", "json")
        shown = json.loads(out)
        return shown["phase"] == "stable" and len(shown["retired_roots"]) == 1

    await eventually(finished, timeout=90, what="the rotation to finish once the proxy ACKs")
    status, text, _ = await run("ca", "show", "--state-dir", state, "--server", server)
    assert "retired root:" in text


@pytest.mark.parametrize(
    ("details", "state"),
    [
        (None, "NOT SENT"),
        ({"version_sent": "", "version_acked": ""}, "NOT SENT"),
        ({"version_sent": "b", "version_acked": "b", "current": True}, "SYNCED"),
        ({"version_sent": "b", "version_acked": "a", "current": False}, "STALE"),
        ({"version_sent": "b", "version_acked": "b", "current": False}, "STALE"),
        (
            {"version_sent": "b", "version_acked": "a", "current": False, "last_nack": {"version": "b"}},
            "NACKED",
        ),
        (
            {"version_sent": "c", "version_acked": "c", "current": True, "last_nack": {"version": "b"}},
            "SYNCED",
        ),
    ],
)
def test_sync_state(details: dict[str, Any] | None, state: str) -> None:
    assert sync_state(details) == state
