"""A pod's network for tests against the real API server: a network namespace with its own
address, joined to this host by a veth pair, so that the API server (on this host) reaches a
process in it as it reaches a pod, at the pod's IP.

Why not loopback: the API server refuses to proxy to a loopback address (`address not
allowed` for a pod, and an EndpointSlice may not hold one), so `meshcp check`'s pod proxy
needs a pod IP that is not.

    with pod_network() as pod:
        subprocess.Popen(pod.exec(sys.executable, "-m", "meshcp", "serve", ...))
        # a Pod object with status.podIP = pod.ip

Needs root and `ip`; without them the test skips (in CI, with `CI` set, it fails). The
namespace (and with it the veth pair and both addresses) is deleted on exit.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.support import required_binary

TIMEOUT = 10.0


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


@dataclass(frozen=True)
class PodNetwork:
    netns: str
    #: The pod's address (inside the namespace).
    ip: str
    #: This host's end of the pair.
    host_ip: str

    def exec(self, *command: str) -> list[str]:
        """`command` run inside the pod's network namespace."""
        return ["ip", "netns", "exec", self.netns, *command]


@contextmanager
def pod_network() -> Iterator[PodNetwork]:
    if os.geteuid() != 0:
        reason = "a pod network needs root (network namespaces)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    ip = required_binary("ip", "iproute2")
    suffix = secrets.token_hex(3)
    # A /30 of its own (the third octet random), so that parallel runs do not share routes.
    octet = secrets.randbelow(250) + 1
    netns, host_if, pod_if = f"meshcp-test-{suffix}-pod", f"mcp{suffix}h", f"mcp{suffix}p"
    host_ip, pod_ip = f"10.253.{octet}.1", f"10.253.{octet}.2"
    _run(ip, "netns", "add", netns)
    try:
        _run(ip, "link", "add", host_if, "type", "veth", "peer", "name", pod_if, "netns", netns)
        _run(ip, "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run(ip, "link", "set", host_if, "up")
        _run(ip, "-n", netns, "addr", "add", f"{pod_ip}/30", "dev", pod_if)
        _run(ip, "-n", netns, "link", "set", pod_if, "up")
        _run(ip, "-n", netns, "link", "set", "lo", "up")
        yield PodNetwork(netns, pod_ip, host_ip)
    finally:
        # Deleting the namespace deletes the veth end inside it, and the pair with it.
        subprocess.run([ip, "link", "delete", host_if], capture_output=True, check=False)
        subprocess.run([ip, "netns", "delete", netns], capture_output=True, check=False)
