"""meshcp against go-control-plane, side by side: the same resources, the same load client.

    flock /tmp/meshcp-bench.lock python benchmarks/peer_compare.py --services 200 --pods 5 --no-prune
    flock /tmp/meshcp-bench.lock python benchmarks/peer_compare.py --services 1000 --pods 5 --xds delta

The mesh is `mesh_manifests.py`'s (the shape options of `mesh_scale.py`). `peer_dump.py`
compiles it once with meshcp's own reconciler and publisher and writes what each proxy
class receives (and the endpoint change); `peers/go-control-plane` (a Go program on
go-control-plane v0.14.0, its envoy API v1.40.0, built here with the machine's Go, module
and build caches under ~/.cache/meshcp-bench) serves exactly those resources, one snapshot
per class of go-control-plane's snapshot cache, per-type versions.

Per run, three servers, one after the other (order alternating between runs), each with
fresh load processes (`mesh_client.py`: raw HTTP/2 simulated Envoys, one ADS stream per
proxy, SotW or delta, following what they receive as Envoy does):

- `meshcp cold`: `meshcp serve --source DIR --insecure-xds` (as `mesh_scale.py` runs it);
  the proxies connect as soon as the xDS port accepts. Cold = spawn -> last proxy
  converged: meshcp reads the manifests, compiles, issues certificates and serves.
- `meshcp warm`: the same, but the proxies connect only once /readyz is 200 and the
  controller is idle (compile, certificates and publishing done): serving only.
- `go-control-plane`: the Go peer on the dump; its xDS port opens once every snapshot is
  set. Cold = spawn -> converged includes reading and unmarshalling the dump (its
  "compile"); serving = connect -> converged.

Then, on each, the endpoint change (`mesh_changes.py`'s `endpoint`: one pod's IP):
meshcp: its service's file is rewritten (the controller re-reads, debounces 100 ms,
compiles, publishes, pushes); go-control-plane: `POST /change` replaces that
ClusterLoadAssignment (as meshcp compiled it) in every class holding it and sets those
snapshots. Latency: from the write (or the POST) to each affected proxy's last ACK while
armed (the load client ACKs on receipt), over distinct proxies; p50, p99, max. The change is
over when every proxy is converged and no response came for --settle seconds.

Figures per server: time to converge, server CPU seconds (utime + stime of the process,
/proc/PID/stat), peak RSS (VmHWM), bytes received by the proxies (= bytes sent), the
server's own counters (meshcp /metrics; go-control-plane's stream callbacks), the load
processes' CPU. Median of --runs. Every child is stopped on exit, errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mesh_client
import mesh_manifests as mm
import mesh_resources
import peer_dump
import processes
from bench_support import load_average, machine, percentile
from control_pipe import Child
from controller_process import Controller, meshcp_source
from mesh_changes import make_change
from mesh_client import LoadSpec

HERE = Path(__file__).resolve().parent
GO_DIR = HERE / "peers" / "go-control-plane"
CACHE = Path.home() / ".cache" / "meshcp-bench"
POLL = 0.05
SERVERS = ("meshcp cold", "meshcp warm", "go-control-plane")


def go_env() -> dict[str, str]:
    return {
        **os.environ,
        "GOMODCACHE": str(CACHE / "gomod"),
        "GOCACHE": str(CACHE / "gocache"),
        "GOFLAGS": "-buildvcs=false",
    }


def build_peer() -> Path:
    """`go build` the peer into the cache directory (outside the work tree)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    binary = CACHE / "gcp-peer"
    started = time.monotonic()
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GO_DIR, env=go_env(), check=True)
    version = subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"# built {binary} in {time.monotonic() - started:.1f} s ({version})", file=sys.stderr)
    return binary


class GoPeer:
    """The go-control-plane peer in its own process, serving `dump`."""

    def __init__(self, binary: Path, dump: Path, log: Path, extra: list[str]) -> None:
        self.xds_port, self.http_port = processes.free_port(), processes.free_port()
        command = [
            str(binary),
            "-dump",
            str(dump),
            "-xds",
            f"127.0.0.1:{self.xds_port}",
            "-http",
            f"127.0.0.1:{self.http_port}",
            *extra,
        ]
        self._log = log.open("wb")
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"go peer exited with {self.process.returncode}; see {self._log.name}")

    def wait_for_xds(self, timeout: float) -> None:
        failure = f"go peer: xDS port {self.xds_port} not open after {timeout:.0f} s"
        processes.wait_for_port(self.xds_port, self.check, timeout, 0.02, failure)

    def cpu(self) -> float:
        return processes.cpu_seconds(self.pid)

    def status_mb(self, key: str) -> float:
        return processes.status_mb(self.pid, key)

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            found: dict[str, Any] = json.loads(response.read())
            return found

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def change(self) -> dict[str, Any]:
        return self._call("POST", "/change")

    def stop(self) -> None:
        processes.stop(self.process, timeout=30)
        self._log.close()


@dataclass
class Figures:
    server: str
    proxies: int
    converge_s: float = 0.0  # from spawn (cold) or from connect (warm, go serving)
    serving_s: float = 0.0  # connect -> last converged
    converge_p50_s: float = 0.0
    cold_cpu_s: float = 0.0  # server CPU at convergence (since spawn)
    serving_cpu_s: float = 0.0  # server CPU from connect to convergence
    cold_rss_mb: float = 0.0
    cold_bytes: int = 0
    cold_client_cpu_s: float = 0.0
    change_affected: int = 0
    change_p50_ms: float = 0.0
    change_p99_ms: float = 0.0
    change_max_ms: float = 0.0
    change_cpu_s: float = 0.0
    change_bytes: int = 0
    change_responses: int = 0
    change_unconverged: int = 0
    peak_rss_mb: float = 0.0
    cold_server_responses: float = 0.0  # the server's own count
    cold_server_resources: float = 0.0
    change_server_responses: float = 0.0
    change_server_resources: float = 0.0
    change_fanout_mean_ms: float = 0.0  # meshcp: mean push latency (content due -> ACK)
    server_counters: dict[str, Any] = field(default_factory=dict)
    note: str = ""


class Launch:
    """One server with its own load processes: converge, then the endpoint change."""

    def __init__(self, args: argparse.Namespace, shape: mm.Shape, which: str, workdir: Path) -> None:
        self.args = args
        self.shape = shape
        self.which = which
        self.workdir = workdir
        self.refs = mm.proxies(shape)
        self.figures = Figures(which, len(self.refs))
        self.loads: list[Child] = []
        self.controller: Controller | None = None
        self.peer: GoPeer | None = None

    # --- the server ---------------------------------------------------------------------

    def _spawned(self) -> float:
        server = self.controller or self.peer
        assert server is not None
        return server.spawned

    def _check(self) -> None:
        if self.controller is not None:
            self.controller.check()
        if self.peer is not None:
            self.peer.check()

    def _cpu(self) -> float:
        server = self.controller or self.peer
        assert server is not None
        return server.cpu()

    def _status_mb(self, key: str) -> float:
        server = self.controller or self.peer
        assert server is not None
        return server.status_mb(key)

    def _counters(self) -> dict[str, Any]:
        if self.peer is not None:
            stats = self.peer.stats()
            return {k: stats[k] for k in ("responses", "resources", "acks", "nacks", "streams")}
        assert self.controller is not None
        metrics = self.controller.metrics()
        out: dict[str, Any] = {}
        for prefix in ("meshcp_xds_responses", "meshcp_xds_resources_sent", "meshcp_xds_acks"):
            out[prefix] = sum(v for k, v in metrics.items() if k.startswith(prefix) and "{" in k)
        out["meshcp_cache_encodes_total"] = metrics.get("meshcp_cache_encodes_total", 0.0)
        for part in ("sum", "count"):  # publish (a stream's content due) -> its ACK
            name = f"meshcp_xds_push_latency_seconds_{part}"
            out[name] = sum(v for k, v in metrics.items() if k.startswith(name + "{"))
        return out

    def close(self) -> None:
        for load in self.loads:
            load.stop()
        if self.controller is not None:
            self.controller.stop()
        if self.peer is not None:
            self.peer.stop()

    # --- the run ------------------------------------------------------------------------

    def ask_all(self, *command: Any, timeout: float = 120.0) -> list[dict[str, Any]]:
        for load in self.loads:
            load.send(*command)
        return [load.recv(timeout) for load in self.loads]

    def _part(self, index: int) -> list[mm.ProxyRef]:
        share = -(-len(self.refs) // self.args.load_processes)
        return self.refs[index * share : (index + 1) * share]

    def execute(self, binary: Path, dump: Path) -> Figures:
        args, f = self.args, self.figures
        for n in range(args.load_processes):
            part = self._part(n)
            if part:
                spec = LoadSpec(
                    "127.0.0.1",
                    0,
                    args.xds == "delta",
                    tuple((p.node_id, p.cluster) for p in part),
                    args.streams_per_connection,
                )
                self.loads.append(Child(f"load-{n}", mesh_client.run, spec, timeout=120.0))
        for load in self.loads:
            load.recv()
        mesh = self.workdir / "mesh"
        if self.which.startswith("meshcp"):
            mm.write_mesh(mesh, self.shape)
            self.controller = Controller(mesh, self.workdir / "state", self.workdir / "serve.log", [])
            self.controller.wait_for_xds(args.timeout)
            port = self.controller.xds_port
            if self.which == "meshcp warm":
                self._wait_idle()
        else:
            self.peer = GoPeer(binary, dump, self.workdir / "peer.log", args.peer_args.split())
            self.peer.wait_for_xds(args.timeout)
            port = self.peer.xds_port
        self.ask_all("connect_to", port)
        cpu0 = self._cpu()
        connect_at = time.monotonic()
        self.ask_all("connect")
        status = self._converge()
        times = [t for s in status for t in s["ready_times"]]
        spawned = self._spawned()
        f.serving_s = max(times) - connect_at
        f.converge_s = max(times) - (connect_at if self.which == "meshcp warm" else spawned)
        f.converge_p50_s = statistics.median(times) - (connect_at if self.which == "meshcp warm" else spawned)
        f.cold_cpu_s = self._cpu()
        f.serving_cpu_s = f.cold_cpu_s - cpu0
        f.cold_rss_mb = self._status_mb("VmRSS")
        f.cold_bytes = sum(s["bytes"] for s in status)
        f.cold_client_cpu_s = sum(s["cpu"] for s in status)
        counters0 = self._counters()
        self._change()
        counters1 = self._counters()
        f.server_counters = {
            "cold": counters0,
            "change": {k: _minus(v, counters0.get(k)) for k, v in counters1.items()},
        }
        f.peak_rss_mb = self._status_mb("VmHWM")
        f.cold_server_responses, f.cold_server_resources = _sent(counters0)
        change = f.server_counters["change"]
        f.change_server_responses, f.change_server_resources = _sent(change)
        pushes = change.get("meshcp_xds_push_latency_seconds_count")
        if pushes:
            f.change_fanout_mean_ms = 1000 * change["meshcp_xds_push_latency_seconds_sum"] / pushes
        return f

    def _wait_idle(self) -> None:
        """/readyz 200, then until the controller used under 2 % of a CPU for 1 s (its
        certificates are issued and every class published)."""
        controller = self.controller
        assert controller is not None
        deadline = time.monotonic() + self.args.timeout
        while controller.get("/readyz", timeout=2)[0] != 200:
            controller.check()
            if time.monotonic() > deadline:
                raise TimeoutError("meshcp: /readyz not 200")
            time.sleep(POLL)
        while True:
            before = controller.cpu()
            time.sleep(1.0)
            if controller.cpu() - before < 0.02:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("meshcp: never idle")

    def _converge(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.args.timeout
        total, last_print = len(self.refs), time.monotonic()
        while True:
            self._check()
            status = self.ask_all("status")
            ready = sum(s["ready"] for s in status)
            failures = [m for s in status for m in s["failed"]]
            if failures:
                raise RuntimeError(f"{self.which}: proxy failures: {failures}")
            if ready == total:
                return status
            now = time.monotonic()
            if now > deadline:
                missing = sum(s["missing"] for s in status)
                raise TimeoutError(f"{self.which}: {ready}/{total} converged ({missing} names missing)")
            if now - last_print > 10:
                last_print = now
                print(f"    {self.which}: {ready}/{total} converged", file=sys.stderr)
            time.sleep(POLL * 4)

    def _change(self) -> None:
        args, f = self.args, self.figures
        armed = self.ask_all("arm")
        bytes0 = sum(a["bytes"] for a in armed)
        base = sum(s["responses"] for s in self.ask_all("status"))
        cpu0 = self._cpu()
        started = time.monotonic()
        if self.controller is not None:
            make_change("endpoint", self.shape, self.workdir / "mesh", self.controller.state)
        else:
            assert self.peer is not None
            self.peer.change()
        deadline = started + args.timeout
        seen, quiet_since = -1, time.monotonic()
        while True:
            self._check()
            time.sleep(POLL * 2)
            status = self.ask_all("status")
            responses = sum(s["responses"] for s in status)
            converged = sum(s["converged"] for s in status) == len(self.refs)
            now = time.monotonic()
            if responses != seen:
                seen, quiet_since = responses, now
            if responses > base and converged and now - quiet_since >= args.settle:
                break
            if now > deadline:
                f.note = f"change: timeout after {args.timeout:.0f} s"
                break
        reports = self.ask_all("report")
        times = [t - started for rep in reports for t in rep["times"]]
        f.change_affected = len(times)
        f.change_p50_ms = 1000 * percentile(times, 0.5)
        f.change_p99_ms = 1000 * percentile(times, 0.99)
        f.change_max_ms = 1000 * max(times, default=0.0)
        f.change_cpu_s = self._cpu() - cpu0
        f.change_bytes = sum(rep["bytes"] for rep in reports) - bytes0
        f.change_responses = sum(rep["responses"] for rep in reports)
        f.change_unconverged = sum(rep["unconverged"] for rep in reports)
        failures = [m for rep in reports for m in rep["failed"]]
        if failures:
            f.note += f" failures: {failures}"


def _sent(counters: dict[str, Any]) -> tuple[float, float]:
    """(responses, resources) sent, from either server's counters."""
    if "responses" in counters:
        return float(sum(counters["responses"].values())), float(sum(counters["resources"].values()))
    return float(counters["meshcp_xds_responses"]), float(counters["meshcp_xds_resources_sent"])


def _minus(after: Any, before: Any) -> Any:
    if isinstance(after, dict):
        return {k: _minus(v, (before or {}).get(k)) for k, v in after.items()}
    if isinstance(after, int | float):
        return after - (before or 0)
    return after


# --- reporting ------------------------------------------------------------------------------

ROWS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("cold: spawn -> every proxy converged, s", "converge_s", lambda v: f"{v:.2f}"),
    ("serving only: connect -> every proxy converged, s", "serving_s", lambda v: f"{v:.2f}"),
    ("server CPU, spawn -> converged, s", "cold_cpu_s", lambda v: f"{v:.2f}"),
    ("server CPU, connect -> converged, s", "serving_cpu_s", lambda v: f"{v:.2f}"),
    ("bytes sent, cold, MB", "cold_bytes", lambda v: f"{v / 1e6:,.1f}"),
    ("responses sent, cold (server's count)", "cold_server_responses", lambda v: f"{v:,.0f}"),
    ("resources sent, cold (server's count)", "cold_server_resources", lambda v: f"{v:,.0f}"),
    ("endpoint change p50, ms", "change_p50_ms", lambda v: f"{v:.0f}"),
    ("endpoint change p99, ms", "change_p99_ms", lambda v: f"{v:.0f}"),
    ("endpoint change max, ms", "change_max_ms", lambda v: f"{v:.0f}"),
    ("proxies that received the change", "change_affected", lambda v: f"{v:,.0f}"),
    (
        "meshcp only: mean of its push latency (a stream's new content due -> its ACK), ms",
        "change_fanout_mean_ms",
        lambda v: f"{v:.0f}" if v else "-",
    ),
    ("server CPU for the change, s", "change_cpu_s", lambda v: f"{v:.3f}"),
    ("bytes sent for the change, MB", "change_bytes", lambda v: f"{v / 1e6:,.2f}"),
    ("responses sent for the change (server's count)", "change_server_responses", lambda v: f"{v:,.0f}"),
    ("resources sent for the change (server's count)", "change_server_resources", lambda v: f"{v:,.0f}"),
    ("peak RSS (VmHWM), MB", "peak_rss_mb", lambda v: f"{v:,.0f}"),
    ("load processes' CPU to converge, s", "cold_client_cpu_s", lambda v: f"{v:.1f}"),
)


def medians(runs: list[Figures]) -> dict[str, float]:
    return {name: statistics.median(float(getattr(r, name)) for r in runs) for _, name, _ in ROWS}


def table(by_server: dict[str, list[Figures]], debounce_ms: int) -> str:
    med = {server: medians(runs) for server, runs in by_server.items() if runs}
    gcp = med.get("go-control-plane")
    heads = [s for s in SERVERS if s in med]
    lines = [
        "| figure | " + " | ".join(heads) + " | meshcp cold / gcp | meshcp warm / gcp |",
        "|---|" + "---:|" * (len(heads) + 2),
    ]

    def ratio(server: str, name: str) -> str:
        if gcp is None or server not in med or not gcp[name]:
            return "-"
        return f"{med[server][name] / gcp[name]:.2f}x"

    for label, name, fmt in ROWS:
        cells = [fmt(med[s][name]) for s in heads]
        if name == "converge_s":
            cells = [fmt(med[s][name]) + (" (from connect)" if s == "meshcp warm" else "") for s in heads]
        ratios = f"{ratio('meshcp cold', name)} | {ratio('meshcp warm', name)}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratios} |")
    if gcp is not None and gcp["change_p99_ms"]:
        for server in ("meshcp cold", "meshcp warm"):
            if server in med:
                beyond = med[server]["change_p99_ms"] - debounce_ms
                lines.append(
                    f"\n{server}: change p99 beyond meshcp's {debounce_ms} ms debounce window: "
                    f"{beyond:.0f} ms ({beyond / gcp['change_p99_ms']:.2f}x go-control-plane's p99)"
                )
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def make_dump(args: argparse.Namespace, workdir: Path) -> tuple[Path, dict[str, float]]:
    dump, figures = workdir / "mesh.dump", workdir / "dump.json"
    command = [sys.executable, str(HERE / "peer_dump.py"), "--out", str(dump), "--figures", str(figures)]
    command += ["--services", str(args.services), "--pods", str(args.pods), "--sources", str(args.sources)]
    command += ["--namespaces", str(args.namespaces), "--mode", args.mode]
    command += ["--prune"] if args.prune else ["--no-prune"]
    started = time.monotonic()
    subprocess.run(command, check=True)
    found: dict[str, float] = json.loads(figures.read_text())
    print(
        f"# dump: {found['resources']:,.0f} distinct resources, {found['classes']:,.0f} classes, "
        f"{found['bytes'] / 1e6:.1f} MB; the change touches {found['change_classes']:,.0f} classes "
        f"({found['change_nodes']:,.0f} proxies); written in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return dump, found


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="peer-compare-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    peer_dump.shape_arguments(parser)
    parser.add_argument("--xds", choices=["sotw", "delta"], default="sotw")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"subset of {SERVERS}")
    parser.add_argument("--settle", type=float, default=1.5, help="quiet seconds that end a change")
    parser.add_argument("--timeout", type=float, default=600.0, help="per phase")
    parser.add_argument("--load-processes", type=int, default=1)
    parser.add_argument("--streams-per-connection", type=int, default=100)
    parser.add_argument("--peer-args", default="", help="extra flags for the Go peer (e.g. -ads)")
    parser.add_argument("--json", default="", metavar="FILE", help="write every run and the medians")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument(
        "--meshcp-rev",
        default="HEAD",
        metavar="REV",
        help="run meshcp (controller, dump, load processes) from `git archive REV src`; '' = working tree",
    )
    args = parser.parse_args()
    args.namespaces = args.namespaces or max(1, args.services // 10)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for server in servers:
        if server not in SERVERS:
            parser.error(f"unknown server {server!r}")
    mesh_resources.self_check()
    with meshcp_source(args.meshcp_rev):
        measure(args, servers)


def measure(args: argparse.Namespace, servers: list[str]) -> None:
    shape = peer_dump.shape_of(args)
    print(f"# {machine()}; load average at start {load_average():.2f}", file=sys.stderr)
    print(f"# command: python {' '.join(sys.argv)}", file=sys.stderr)
    started = time.monotonic()
    binary = build_peer()
    by_server: dict[str, list[Figures]] = {s: [] for s in servers}
    with processes.terminate_on_sigterm(), workspace(args.keep) as root:
        dump, dumped = make_dump(args, root)
        for n in range(args.runs):
            order = servers if n % 2 == 0 else servers[::-1]
            for server in order:
                workdir = root / f"run{n}-{server.replace(' ', '-')}"
                workdir.mkdir()
                launch = Launch(args, shape, server, workdir)
                try:
                    figures = launch.execute(binary, dump)
                finally:
                    launch.close()
                by_server[server].append(figures)
                print(
                    f"  run {n + 1} {server}: converge {figures.converge_s:.2f} s "
                    f"(serving {figures.serving_s:.2f} s), change p99 {figures.change_p99_ms:.0f} ms "
                    f"({figures.change_affected}), "
                    f"CPU {figures.cold_cpu_s:.1f}+{figures.change_cpu_s:.2f} s, "
                    f"peak RSS {figures.peak_rss_mb:.0f} MB {figures.note}",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"\n{args.services} services x {args.pods} pods = {shape.proxies:,} proxies, {args.mode}"
        f"{', pruned' if args.prune else ', not pruned'}, {args.xds}; median of {args.runs}"
    )
    print(table(by_server, shape.debounce_ms))
    print(
        f"# load average at end {load_average():.2f}; total {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "dump": dumped,
                    "runs": {s: [asdict(r) for r in runs] for s, runs in by_server.items()},
                    "medians": {s: medians(runs) for s, runs in by_server.items() if runs},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
