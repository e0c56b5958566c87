"""`meshcp proxy status|config`, `meshcp version` and `meshcp ca show` against a real
`meshcp serve` (mTLS xDS) and a real Envoy bootstrapped by `meshcp bootstrap`."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshcp import __version__
from meshcp.xds.sync_status import sync_state
from tests.cli.controller import POD, TYPES, Mesh, proxy_status, run, running_mesh, wait_synced
from tests.support import eventually
from tests.support.envoy import REAL_ENVOY


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as running:
        yield running


pytestmark = REAL_ENVOY


async def test_proxy_status_config_and_version(mesh: Mesh) -> None:
    await wait_synced(mesh)
    [row] = await proxy_status(mesh)
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
    assert header.split() == ["POD", "IDENTITY", "STREAM", "FLAVOUR", "CDS", "EDS", "LDS", "RDS", "SDS"]
    assert line.split()[:4] == [f"bookstore/{POD}", "bookstore/bookstore", "sotw", "sidecar"]
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
    await wait_synced(mesh)
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

        # Dropping the old root now would strand every proxy's certificate: refused.
        status, out, err = await run("ca", "finish-rotation", "--state-dir", state, "--server", server)
        assert (status, out) == (1, "")
        assert err.startswith(
            f"meshcp: error: the controller at {server} is in phase trusting (it waits for 1 proxies"
        ), err
        assert err.endswith("finishing now breaks mTLS between every proxy (--force does it anyway)\n"), err
    finally:
        os.kill(pid, signal.SIGCONT)

    async def finished() -> bool:
        _, out, _ = await run("ca", "show", "--state-dir", state, "--server", server, "-o", "json")
        shown = json.loads(out)
        return shown["phase"] == "stable" and len(shown["retired_roots"]) == 1

    await eventually(finished, timeout=90, what="the rotation to finish once the proxy ACKs")
    status, text, _ = await run("ca", "show", "--state-dir", state, "--server", server)
    assert "retired root:" in text


async def test_proxy_status_of_a_delta_stream(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, delta=True) as mesh:
        await wait_synced(mesh)
        [row] = await proxy_status(mesh)
        assert row["stream"] == "delta"
        for short in TYPES:
            assert row[short]["version_acked"] == row[short]["version_current"], row


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
