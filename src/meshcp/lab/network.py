"""The lab's network: a node namespace with a bridge, one namespace per pod, iptables.

Pods have a /32 address and a default route through the node, so every packet between
pods crosses the node's IP layer: the node's DNAT rules (ClusterIPs of unmeshed traffic)
see both directions of each connection without br_netfilter, as with routed CNIs such
as Calico. The node forwards but sends no ICMP redirects, which would teach pods to
bypass it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence

from meshcp.lab import layout

TOOLS = ("ip", "iptables-restore", "setpriv")
TIMEOUT = 30.0


class LabError(Exception):
    """Something the lab needs failed; the message says what and how to fix it."""


def check_prerequisites() -> None:
    """Root and the tools, or a message saying what is missing and where to get it."""
    if os.geteuid() != 0:
        raise LabError(
            "meshcp lab needs root: it creates network namespaces, iptables rules and runs Envoy "
            "as UID 1500. Run it as root, or serve the manifests without a lab: "
            "meshcp serve --source examples/bookstore"
        )
    packages = {"ip": "iproute2", "iptables-restore": "iptables", "setpriv": "util-linux"}
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        names = " ".join(sorted({packages[tool] for tool in missing}))
        raise LabError(f"missing {', '.join(missing)}: install them (Debian: apt-get install -y {names})")


async def run(*argv: str, input_text: str | None = None, check: bool = True) -> str:
    """Run a short command; its stdout, or `LabError` with its stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input_text is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            process.communicate(input_text.encode() if input_text is not None else None), TIMEOUT
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise LabError(f"{' '.join(argv)} did not finish in {TIMEOUT:.0f} s") from None
    if check and process.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


async def create_node() -> None:
    """The node namespace: bridge with the gateway address, forwarding on."""
    ns = layout.NODE_NETNS
    await run("ip", "netns", "add", ns)
    await run("ip", "-n", ns, "link", "set", "lo", "up")
    await run("ip", "-n", ns, "link", "add", layout.BRIDGE, "type", "bridge")
    await run(
        "ip", "-n", ns, "addr", "add", f"{layout.GATEWAY}/{layout.POD_CIDR.prefixlen}", "dev", layout.BRIDGE
    )
    await run("ip", "-n", ns, "link", "set", layout.BRIDGE, "up")
    # /proc/sys/net belongs to the namespace of whoever opens it (and `sysctl` is not on
    # every machine: Debian's procps is not installed by default).
    settings = {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/send_redirects": "0",
        f"net/ipv4/conf/{layout.BRIDGE}/send_redirects": "0",
    }
    script = "; ".join(f"echo {value} > /proc/sys/{key}" for key, value in settings.items())
    await run("ip", "netns", "exec", ns, "sh", "-c", script)


async def create_pod(netns: str, ip: str, interface: int) -> None:
    """A pod namespace joined to the node's bridge by a veth pair (`eth0` inside)."""
    node = layout.NODE_NETNS
    veth = f"{layout.VETH_PREFIX}{interface}"
    await run("ip", "netns", "add", netns)
    await run("ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    await run("ip", "-n", node, "link", "set", veth, "master", layout.BRIDGE, "up")
    await run("ip", "-n", netns, "link", "set", "lo", "up")
    await run("ip", "-n", netns, "addr", "add", f"{ip}/32", "dev", "eth0")
    await run("ip", "-n", netns, "link", "set", "eth0", "up")
    await run("ip", "-n", netns, "route", "add", f"{layout.GATEWAY}/32", "dev", "eth0", "scope", "link")
    await run("ip", "-n", netns, "route", "add", "default", "via", str(layout.GATEWAY), "dev", "eth0")


async def delete_netns(netns: str) -> None:
    """Deleting a namespace deletes the veth pair with it."""
    await run("ip", "netns", "delete", netns, check=False)


async def restore_nat(netns: str, script: str, *, flush: bool) -> None:
    """Load a `nat` table script in a namespace (`flush`: replace the whole table)."""
    argv = ["ip", "netns", "exec", netns, "iptables-restore"]
    if not flush:
        argv.append("--noflush")
    await run(*argv, input_text=script)


async def lab_namespaces() -> list[str]:
    """Every network namespace the lab made, including a crashed lab's."""
    out = await run("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(name for name in names if name.startswith(layout.PREFIX + "-"))


async def pids_in(netns: str) -> list[int]:
    out = await run("ip", "netns", "pids", netns, check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def write_hosts(netns: str, text: str) -> None:
    """/etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts. Written in
    place: running processes see the bind-mounted inode, so a rename would hide updates."""
    directory = layout.ETC_NETNS / netns
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "hosts", "w", encoding="utf-8") as handle:
        handle.write(text)


def remove_hosts(names: Sequence[str] | None = None) -> None:
    """The lab's /etc/netns entries (all of them when `names` is None)."""
    if not layout.ETC_NETNS.is_dir():
        return
    for entry in layout.ETC_NETNS.iterdir():
        if entry.name.startswith(layout.PREFIX + "-") and (names is None or entry.name in names):
            shutil.rmtree(entry, ignore_errors=True)
