"""`meshcp ca show|rotate|finish-rotation` on a state directory and on the CA's Kubernetes
Secret (a kmock API server), with the same facts in text and json."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from meshcp.certs import DirectoryStore, InternalCA
from meshcp.certs.kubernetes_store import SecretStore
from tests.certs.test_kubernetes_store import NAME, NAMESPACE, Emulator

MESHCP = [sys.executable, "-m", "meshcp"]
#: No controller answers here: `ca` works without one, and says so.
NO_SERVER = ["--server", "127.0.0.1:9"]


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *MESHCP, *args, *NO_SERVER, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def same_facts(report: dict[str, Any], text: str) -> None:
    """Everything the json says is in the text."""
    assert f"phase: {report['phase']}" in text
    assert f"store: {report['store']}" in text
    roots = [report["root"], report["previous_root"], *report["retired_roots"]]
    for root in filter(None, roots):
        for value in root.values():
            assert f": {value}" in text
    assert text.count("retired root:") == len(report["retired_roots"])
    assert "controller: not reachable at 127.0.0.1:9" in text
    assert report["controller"] is None


async def cycle(where: list[str]) -> list[dict[str, Any]]:
    """show, rotate, rotate again (refused), finish-rotation, show: the json reports."""
    reports: list[dict[str, Any]] = []
    for action in ("show", "rotate", "rotate", "finish-rotation", "show"):
        status, out, err = await run("ca", action, *where, "-o", "json")
        if reports and reports[-1]["phase"] == "trusting" and action == "rotate":
            assert status == 1
            assert err.strip().endswith("`meshcp ca finish-rotation` finishes it now"), err
            assert len(err.strip().splitlines()) == 1
            continue
        assert status == 0, err
        report = json.loads(out)
        status, text, _ = await run("ca", action if action == "show" else "show", *where)
        same_facts(report, text)
        reports.append(report)
    assert [r["phase"] for r in reports] == ["stable", "trusting", "stable", "stable"]
    first, rotating, finished, last = reports
    assert rotating["previous_root"] == first["root"] != rotating["root"]
    assert finished["previous_root"] is None
    assert finished["retired_roots"] == [first["root"]]
    assert last == finished
    return reports


async def test_on_a_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    status, _, err = await run("ca", "show", "--state-dir", str(state))
    assert (status, err) == (1, f"meshcp: error: certificate provider 'internal': no CA found in {state}\n")
    await InternalCA.open(DirectoryStore(state))
    reports = await cycle(["--state-dir", str(state)])
    assert reports[0]["store"] == str(state)


@pytest.fixture
async def k() -> AsyncIterator[Emulator]:
    async with Emulator() as emulator, kmock.Server(emulator):
        emulator.resources["v1/secrets"] = {}  # type: ignore[assignment]
        yield emulator


async def test_on_the_ca_secret(k: Emulator, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "k", "cluster": {"server": str(k.url).rstrip("/")}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    where = ["--ca-secret", f"{NAMESPACE}/{NAME}", "--kubeconfig", str(kubeconfig)]
    status, _, err = await run("ca", "show", *where)
    assert status == 1 and "no CA found in Kubernetes Secret meshcp-system/meshcp-ca" in err, err
    async with ApiClient(Configuration(host=str(k.url))) as client:
        created = await InternalCA.open(SecretStore(client, NAMESPACE, NAME))
    reports = await cycle(where)
    assert reports[0]["store"] == f"Kubernetes Secret {NAMESPACE}/{NAME}"
    assert reports[0]["root"]["sha256_fingerprint"]
    assert created.state.active.id  # the Secret's CA is the one shown
    assert not any(
        key.endswith(".key") and created.state.active.id in key for key in k.entries()
    )  # destroyed

    status, _, err = await run("ca", "show", "--ca-secret", "nonsense", "--kubeconfig", str(kubeconfig))
    assert (status, err) == (2, "meshcp: error: --ca-secret 'nonsense' is not NAMESPACE/NAME\n")
    status, _, err = await run("ca", "show", *where[:2], "--kubeconfig", str(tmp_path / "none"))
    assert (
        status == 1
        and err == f"meshcp: error: --kubeconfig {tmp_path / 'none'}: no such file\n"
        and len(err.splitlines()) == 1
    )
