"""A pod and a peer as two network namespaces joined by a veth pair, for real iptables.

    with PodNetwork.create() as net:
        net.run_in_pod(init_command(render(Redirection())))
        with net.serve(net.pod, "pod", [15001]), net.serve(net.peer, "peer", [8080]):
            landed = net.connect(net.pod, net.peer_ip, 8080, uid=1000)

Needs root, `ip`, `iptables-restore` and `setpriv`; `PodNetwork.create` skips the test with
the reason when one is missing. The namespaces (and with them the veth pair and every rule)
are deleted on exit, whatever happened.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

PROBE_SOURCE = Path(__file__).with_name("netprobe.py").read_text()
POD_IP = "10.251.0.1"
PEER_IP = "10.251.0.2"
#: A second address of the peer, to tell IP range exclusions and inclusions apart.
PEER_IP_2 = "10.251.0.3"
TIMEOUT = 10.0


def _run(*command: str, input_text: str | None = None) -> str:
    result = subprocess.run(
        command, input=input_text, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _require_tools() -> None:
    if os.geteuid() != 0:
        _missing("real iptables tests need root (network namespaces)")
    for tool in ("ip", "iptables-restore", "iptables-save", "setpriv"):
        if shutil.which(tool) is None:
            _missing(f"{tool} is not installed (Debian packages iptables, iproute2, util-linux)")


def _missing(reason: str) -> NoReturn:
    """Skip outside CI; in CI (`CI` set) a missing prerequisite fails."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _python_for(uid: int) -> str:
    """An interpreter `uid` can execute (a pyenv or venv under /root is not one)."""
    candidates = [sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]
    for python in dict.fromkeys(c for c in candidates if c):
        probe = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python, "-c", "pass"],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        if probe.returncode == 0:
            return python
    _missing(f"no Python interpreter is executable by UID {uid}")


@dataclass
class PodNetwork:
    pod: str
    peer: str
    pod_ip: str = POD_IP
    peer_ip: str = PEER_IP
    peer_ip_2: str = PEER_IP_2
    _pythons: dict[int, str] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def create(cls) -> Iterator[PodNetwork]:
        _require_tools()
        suffix = secrets.token_hex(3)
        pod, peer = f"meshcp-test-{suffix}-pod", f"meshcp-test-{suffix}-peer"
        pod_if, peer_if = f"mcp{suffix}p", f"mcp{suffix}q"
        created: list[str] = []
        try:
            for name in (pod, peer):
                _run("ip", "netns", "add", name)
                created.append(name)
            _run("ip", "link", "add", pod_if, "type", "veth", "peer", "name", peer_if)
            _run("ip", "link", "set", pod_if, "netns", pod)
            _run("ip", "link", "set", peer_if, "netns", peer)
            for ns, interface, addresses in (
                (pod, pod_if, [POD_IP]),
                (peer, peer_if, [PEER_IP, PEER_IP_2]),
            ):
                for address in addresses:
                    _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", interface)
                _run("ip", "-n", ns, "link", "set", interface, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            yield cls(pod, peer)
        finally:
            # Deleting a namespace deletes the veth end inside it, and the pair with it.
            subprocess.run(["ip", "link", "delete", pod_if], capture_output=True, check=False)
            for name in created:
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)

    def run_in_pod(self, command: Sequence[str]) -> str:
        """Run `command` as root in the pod's namespace (the init container's job)."""
        return _run("ip", "netns", "exec", self.pod, *command)

    def nat_rules(self) -> str:
        return self.run_in_pod(["iptables-save", "-t", "nat"])

    @contextmanager
    def serve(self, namespace: str, tag: str, ports: Sequence[int]) -> Iterator[None]:
        """Listeners on 0.0.0.0:`ports` in `namespace` answering which of them accepted."""
        args = [str(port) for port in ports]
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", PROBE_SOURCE, "serve", tag, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "ready":
                process.kill()
                _, stderr = process.communicate(timeout=TIMEOUT)
                raise AssertionError(f"listeners in {tag} did not start: {stderr.strip()}")
            yield
        finally:
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()

    def connect(self, namespace: str, host: str, port: int, *, uid: int = 0) -> dict[str, Any]:
        """Connect from `namespace` as `uid`; where the connection landed (see netprobe)."""
        python = self._pythons.get(uid) or self._pythons.setdefault(uid, _python_for(uid))
        command = ["ip", "netns", "exec", namespace]
        if uid:
            command += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        command += [python, "-c", PROBE_SOURCE, "connect", host, str(port)]
        report: dict[str, Any] = json.loads(_run(*command))
        return report
