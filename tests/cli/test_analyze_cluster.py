"""`meshcp analyze --kubeconfig` against a Kubernetes API emulator (kmock): the same
findings as on manifests, each named by its Kubernetes reference (there is no file)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest
import yaml

from meshcp.sources.kubernetes import RESOURCES
from tests.sources.kube_fixtures import Emulator
from tests.sources.kube_objects import SAMPLES, key, seed

MESHCP = [sys.executable, "-m", "meshcp"]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator() as k, kmock.Server(k):
        k.declare(*(key(resource) for resource in RESOURCES))
        yield k


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *MESHCP, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_analyze_a_cluster(emulator: Emulator, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "k", "cluster": {"server": str(emulator.url).rstrip("/")}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "k", "context": {"cluster": "k", "user": "u"}}],
                "current-context": "k",
            }
        )
    )
    seed(
        emulator,
        *(SAMPLES[kind] for kind in ("Namespace", "ServiceAccount", "TrafficTarget", "TrafficSplit")),
    )
    status, out, err = await run("analyze", "--kubeconfig", str(kubeconfig), "-o", "json")
    assert status == 1, err
    rows = json.loads(out)
    found = {(row["code"], row["object"], row["field"], row["location"]) for row in rows}
    assert ("MCP0103", "TrafficTarget shop/web", "spec.rules[0].name", "") in found  # HTTPRouteGroup routes
    assert ("MCP0101", "TrafficTarget shop/web", "spec.sources[0].name", "") in found  # ServiceAccount client
    assert ("MCP0402", "TrafficSplit shop/web", "spec.service", "") in found

    status, out, err = await run("analyze", "--kubeconfig", str(kubeconfig), "--context", "nope")
    assert status == 1
    assert err.startswith("meshcp: error: no Kubernetes access") and len(err.splitlines()) == 1, err


async def test_an_unreachable_api_server_is_one_line(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "k", "context": {"cluster": "k", "user": "u"}}],
                "current-context": "k",
            }
        )
    )
    status, out, err = await run("analyze", "--kubeconfig", str(kubeconfig), "--timeout", "1")
    assert (status, out) == (1, "")
    assert err.startswith("meshcp: error: the Kubernetes API did not list the mesh's objects within 1s"), err
    assert "Cannot connect to host 127.0.0.1:9" in err and len(err.splitlines()) == 1, err
