"""`meshcp demo`: OSM's bookstore in a lab, real traffic for a while, then a report.

The calls run in the client pods (`client.py` from examples/bookstore/apps, through the
same path as `lab exec`), all at once, for the whole duration; the report says who called
whom with what result, how the TrafficSplit shared the bookstore's traffic, and what the
server sidecars' own statistics say about mutual TLS, and ends with the KPIs the mesh
measured, read back from the lab's Prometheus (`lab.demo_kpis`). The lab is removed
afterwards, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from meshcp.lab import commands, demo_kpis, network, processes
from meshcp.lab.layout import LabPaths
from meshcp.lab.netns_http import get
from meshcp.lab.pods import Container
from meshcp.sidecar.ports import ADMIN_PORT


@dataclass(frozen=True)
class Call:
    source: str  # namespace/pod
    url: str
    method: str
    headers: tuple[str, ...]
    expect: str  # "allowed" | "denied"

    @property
    def label(self) -> str:
        return f"{self.method} {self.url.removeprefix('http://')}"


BOOKSTORE = "http://bookstore.bookstore:14001"
WAREHOUSE = "http://bookwarehouse.bookwarehouse:14001"
BUYER_HEADERS = ("client-app=bookbuyer", "user-agent=Go-http-client/1.1")
CALLS = (
    Call("bookbuyer/bookbuyer-0", f"{BOOKSTORE}/books-bought", "GET", BUYER_HEADERS, "allowed"),
    Call("bookbuyer/bookbuyer-0", f"{BOOKSTORE}/buy-a-book/new", "GET", BUYER_HEADERS, "allowed"),
    Call("bookbuyer/bookbuyer-0", f"{BOOKSTORE}/update-books-bought", "POST", BUYER_HEADERS, "denied"),
    Call("bookthief/bookthief-0", f"{BOOKSTORE}/books-bought", "GET", ("client-app=bookthief",), "denied"),
    Call("bookthief/bookthief-0", f"{WAREHOUSE}/restock-books", "POST", (), "denied"),
)
SERVERS = ("bookstore/bookstore-v1-0", "bookstore/bookstore-v2-0")
HANDSHAKES = re.compile(r"^listener\.0\.0\.0\.0_15003\.ssl\.handshake: (\d+)$", re.MULTILINE)


def run_demo(source: Path, paths: LabPaths, *, duration: float, out: TextIO = sys.stdout) -> int:
    try:
        network.check_prerequisites()
    except network.LabError as error:
        print(f"meshcp demo runs the bookstore mesh in a lab, which needs root.\n{error}", file=out)
        return 1
    client = (source / "apps" / "client.py").resolve()
    if not client.is_file():
        raise network.LabError(f"{source} has no apps/client.py: meshcp demo runs examples/bookstore")
    commands.up(source, paths, out)
    try:
        print(f"\ndriving traffic for {duration:.0f} s ...", file=out)
        started = time.time()
        results = asyncio.run(_drive(paths, client, duration))
        ended = time.time()
        handshakes = asyncio.run(_handshakes(paths))
        as_expected = _report(results, handshakes, out)
        demo_kpis.report_kpis(source, started, ended, out)
    finally:
        print("", file=out)
        commands.down(paths, out)
    if not as_expected:
        print("meshcp demo: some calls did not get the answer the policy gives (UNEXPECTED above)", file=out)
        return 1
    return 0


async def _drive(paths: LabPaths, client: Path, duration: float) -> list[tuple[Call, dict[str, Any]]]:
    state = json.loads(paths.state.read_text())
    runs = [_call(state["pods"], call, client, duration) for call in CALLS]
    return list(zip(CALLS, await asyncio.gather(*runs), strict=True))


async def _call(pods: dict[str, Any], call: Call, client: Path, duration: float) -> dict[str, Any]:
    pod = pods[call.source]
    app = next(Container.from_json(c) for c in pod["containers"] if c["name"] != "envoy")
    argv = [sys.executable, str(client), "--url", call.url, "--method", call.method]
    argv += [f"--header={header}" for header in call.headers]
    argv += ["--duration", str(duration), "--interval", "0.02"]
    command = processes.command_line(
        pod["netns"], Container(app.name, tuple(argv), app.env, app.uid, app.gid, "/")
    )
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise network.LabError(f"the client in {call.source} failed: {stderr.decode().strip()[-500:]}")
    summary: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return summary


async def _handshakes(paths: LabPaths) -> dict[str, int]:
    """Inbound TLS handshakes each bookstore sidecar completed, from its admin stats."""
    state = json.loads(paths.state.read_text())
    out = {}
    for key in SERVERS:
        _, body = await get(state["pods"][key]["netns"], ADMIN_PORT, "/stats?filter=ssl.handshake")
        match = HANDSHAKES.search(body.decode())
        out[key] = int(match[1]) if match else 0
    return out


def _report(results: Sequence[tuple[Call, dict[str, Any]]], handshakes: dict[str, int], out: TextIO) -> bool:
    """Prints the calls, the split and mTLS; whether every call got what the policy gives."""
    rows = [("FROM", "CALL", "RESULTS", "EXPECTED", "")]
    split: dict[str, int] = {}
    every_ok = True
    for call, summary in results:
        statuses: dict[str, int] = summary["statuses"]
        allowed = statuses.get("200", 0)
        ok = (allowed == sum(statuses.values())) if call.expect == "allowed" else allowed == 0
        every_ok = every_ok and ok
        text = ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items()))
        rows.append((call.source.split("/")[1], call.label, text, call.expect, "ok" if ok else "UNEXPECTED"))
        if call.url.startswith(BOOKSTORE) and call.expect == "allowed":
            for pod, count in summary["served_by"].items():
                split[pod] = split.get(pod, 0) + count
    print("", file=out)
    commands.print_table(rows, out)
    total = sum(split.values())
    if total:
        shares = ", ".join(
            f"{pod} {count} ({100 * count / total:.0f}%)" for pod, count in sorted(split.items())
        )
        print(f"\nTrafficSplit bookstore (v1 75 / v2 25): {shares}", file=out)
    print("mTLS: inbound TLS handshakes at the server sidecars (Envoy stats): ", end="", file=out)
    print(", ".join(f"{key.split('/')[1]} {count}" for key, count in handshakes.items()), file=out)
    print(
        "      the bookstore apps themselves only speak plaintext HTTP: the sidecars terminate mTLS", file=out
    )
    return every_ok
