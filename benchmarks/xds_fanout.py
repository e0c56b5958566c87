"""ADS fan-out: N simulated Envoys, one server process, one-resource change to all of them.

    python benchmarks/xds_fanout.py --clients 10000 --mode both --resources 100 --runs 3

Processes (multiprocessing spawn, synchronised through pipes, never sleeps): this
orchestrator; one server process running meshcp's xDS stack (fanout_server.py:
SnapshotCache, AggregatedDiscoveryService, XdsServer over grpclib, Metrics); one or more
load processes simulating the proxies (fanout_client.py: raw HTTP/2, many streams per
connection, far cheaper per message than the server so that it is not the bottleneck).

Per run: connect N streams and wait until each ACKed CDS, EDS, LDS and RDS; then, for
each of --changes changes, build a new snapshot with one ClusterLoadAssignment changed
(reusing every other encoded Resource), set it, and wait until the server has counted N
EDS ACKs. Every number is the median over --runs fresh server processes. The baseline is
a run with --baseline-clients (1,000) proxies in the same invocation: the ratio of
per-client costs at N to those at the baseline shows whether the server scales linearly
(1.0) or degrades with the number of streams (> 1.0). The encode column's baseline is a
naive rebuild that encodes every resource again.

--py-spy DIR samples the server during each phase of the first run at N (py-spy from
PyPI) and prints the top functions; --profile DIR does the same with cProfile.
See RESULTS.md for figures and findings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import fanout_client
import fanout_server
from bench_support import top_functions
from fanout_client import LoadSpec, Plan
from fanout_workload import endpoint_names, route_names

PHASE_TIMEOUT = 300.0


@dataclass
class RunResult:
    mode: str
    clients: int
    classes: int
    resources: int
    initial_s: float
    initial_server_cpu_s: float
    initial_client_cpu_s: float
    rss_idle_mb: float
    rss_per_client_kb: float
    change_s: list[float] = field(default_factory=list)  # set_snapshot -> server counted N ACKs
    change_client_s: list[float] = field(default_factory=list)  # set_snapshot -> last client ACK sent
    change_p50_s: list[float] = field(default_factory=list)  # set_snapshot -> median client ACK sent
    change_server_cpu_s: list[float] = field(default_factory=list)
    change_client_cpu_s: list[float] = field(default_factory=list)
    encodes: list[int] = field(default_factory=list)
    build_s: list[float] = field(default_factory=list)  # the new snapshot: 1 encode + Snapshot objects
    naive_encodes: int = 0
    naive_seconds: float = 0.0
    profiles: dict[str, str] = field(default_factory=dict)


class Child:
    """A spawned process and our end of its control pipe."""

    def __init__(self, name: str, target: Any, spec: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.pipe, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(target=target, args=(child_end, spec), name=name)
        self.process.start()
        child_end.close()

    def send(self, *command: Any) -> None:
        self.pipe.send(command)

    def recv(self, timeout: float = PHASE_TIMEOUT) -> dict[str, Any]:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
        try:
            reply: dict[str, Any] = self.pipe.recv()
        except EOFError:
            raise RuntimeError(f"{self.name} exited (code {self.process.exitcode})") from None
        return reply

    def stop(self) -> None:
        try:
            self.send("stop")
            self.recv(timeout=30)
        except (OSError, TimeoutError, RuntimeError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.pipe.close()


class Sampler:
    """py-spy sampling the server process during one phase (raw collapsed stacks)."""

    def __init__(self, directory: str, pid: int | None, phase: str) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._phase = phase
        self._output = Path(directory) / f"{phase}.txt"
        if directory and pid is not None:
            output = self._output
            command = [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "-o",
                str(output),
            ]
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert self._process.stdout is not None
            self._process.stdout.readline()  # "py-spy> Sampling process ...": attached

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGINT)
            self._process.communicate(timeout=60)
            self._process = None
            print(f"## py-spy, server, {self._phase}\n{top_functions(self._output, 15)}", file=sys.stderr)


def _check(replies: list[dict[str, Any]], what: str) -> None:
    failures = sum(int(r["failures"]) for r in replies)
    if failures:
        examples = [m for r in replies for m in r["failed"]][:5]
        raise RuntimeError(f"{what}: {failures} client failures, e.g. {examples}")


def run_once(
    args: argparse.Namespace,
    mode: str,
    clients: int,
    classes: int,
    profile: str,
    sample: str,
    traced: int = 0,
) -> RunResult:
    server = Child(
        "server", fanout_server.run, fanout_server.ServerSpec(args.resources, classes, profile, traced)
    )
    pid = server.process.pid
    loads: list[Child] = []
    try:
        hello = server.recv(timeout=120)
        plan = Plan(
            delta=mode == "delta",
            endpoint_names=tuple(endpoint_names(args.resources)),
            route_names=tuple(route_names()),
            expected=(args.resources, args.resources, 2, len(route_names())),
        )
        share, extra = divmod(clients, args.load_processes)
        first = 0
        for n in range(args.load_processes):
            count = share + (1 if n < extra else 0)
            spec = LoadSpec(
                "127.0.0.1", hello["port"], first, count, classes, args.streams_per_connection, plan
            )
            loads.append(Child(f"load-{n}", fanout_client.run, spec))
            first += count
        for load in loads:
            load.recv(timeout=120)

        sampler = Sampler(sample, pid, "initial")
        server.send("initial", clients)
        started = time.monotonic()
        for load in loads:
            load.send("connect")
        ready = [load.recv() for load in loads]
        initial = server.recv()
        sampler.stop()
        _check(ready, "initial configuration")
        if sum(int(r["ready"]) for r in ready) != clients or initial["connected"] != clients:
            raise RuntimeError(f"only {initial['connected']} of {clients} streams connected")
        finished = max(initial["reached"], *(r["ready_last"] for r in ready))
        result = RunResult(
            mode=mode,
            clients=clients,
            classes=classes,
            resources=hello["resources"],
            initial_s=finished - started,
            initial_server_cpu_s=initial["cpu"],
            initial_client_cpu_s=sum(r["cpu"] for r in ready),
            rss_idle_mb=hello["rss"] / 2**20,
            rss_per_client_kb=(initial["rss"] - hello["rss"]) / clients / 1024,
            naive_encodes=hello["naive_encodes"],
            naive_seconds=hello["naive_seconds"],
        )
        if initial["profile"]:
            result.profiles["initial"] = initial["profile"]

        sampler = Sampler(sample, pid, "change")
        for _ in range(args.changes):
            for load in loads:
                load.send("arm")
            armed = [load.recv() for load in loads]
            server.send("change", clients)
            change = server.recv()
            for load in loads:
                load.send("report")
            reports = [load.recv() for load in loads]
            _check(reports, "change")
            times = sorted(t for r in reports for t in r["times"])
            once = sum(int(r["exactly_once"]) for r in reports)
            if len(times) != clients or once != clients:
                raise RuntimeError(f"change reached {len(times)} clients, {once} exactly once, of {clients}")
            result.change_s.append(change["reached"] - change["set"])
            result.change_client_s.append(times[-1] - change["set"])
            result.change_p50_s.append(times[len(times) // 2] - change["set"])
            result.change_server_cpu_s.append(change["cpu"])
            result.change_client_cpu_s.append(
                sum(r["cpu"] - a["cpu"] for r, a in zip(reports, armed, strict=True))
            )
            result.encodes.append(change["encodes"])
            result.build_s.append(change["build_seconds"])
            if change["profile"]:
                result.profiles["change"] = change["profile"]
        sampler.stop()
        return result
    finally:
        for load in loads:
            load.stop()
        server.stop()


# Reporting ---------------------------------------------------------------------------


@dataclass
class Summary:
    """Medians over runs (each run's change figure is the median of its changes)."""

    mode: str
    classes: int
    clients: int
    runs: int
    initial_s: float
    change_s: float
    change_client_s: float
    change_p50_s: float
    initial_server_cpu_s: float
    change_server_cpu_s: float
    change_client_cpu_s: float
    initial_client_cpu_s: float
    rss_per_client_kb: float
    rss_idle_mb: float
    encodes: int
    build_ms: float
    naive_encodes: int
    naive_ms: float


def summarise(results: list[RunResult]) -> Summary:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    first = results[0]
    return Summary(
        mode=first.mode,
        classes=first.classes,
        clients=first.clients,
        runs=len(results),
        initial_s=med([r.initial_s for r in results]),
        change_s=med([med(r.change_s) for r in results]),
        change_client_s=med([med(r.change_client_s) for r in results]),
        change_p50_s=med([med(r.change_p50_s) for r in results]),
        initial_server_cpu_s=med([r.initial_server_cpu_s for r in results]),
        change_server_cpu_s=med([med(r.change_server_cpu_s) for r in results]),
        change_client_cpu_s=med([med(r.change_client_cpu_s) for r in results]),
        initial_client_cpu_s=med([r.initial_client_cpu_s for r in results]),
        rss_per_client_kb=med([r.rss_per_client_kb for r in results]),
        rss_idle_mb=med([r.rss_idle_mb for r in results]),
        encodes=max(e for r in results for e in r.encodes),
        build_ms=med([med(r.build_s) for r in results]) * 1000,
        naive_encodes=first.naive_encodes,
        naive_ms=med([r.naive_seconds for r in results]) * 1000,
    )


_COLUMNS = (
    ("mode", "{:>5}", "mode"),
    ("cls", "{:>3}", "classes"),
    ("clients", "{:>7}", "clients"),
    ("initial s", "{:>9.2f}", "initial_s"),
    ("change s", "{:>8.3f}", "change_s"),
    ("cli p50 s", "{:>9.3f}", "change_p50_s"),
    ("cli last s", "{:>10.3f}", "change_client_s"),
    ("srv CPU init", "{:>12.2f}", "initial_server_cpu_s"),
    ("cli CPU init", "{:>12.2f}", "initial_client_cpu_s"),
    ("srv CPU chg", "{:>11.3f}", "change_server_cpu_s"),
    ("cli CPU chg", "{:>11.3f}", "change_client_cpu_s"),
    ("RSS KB/cli", "{:>10.1f}", "rss_per_client_kb"),
    ("enc/chg", "{:>7}", "encodes"),
)


def table(summaries: list[Summary]) -> str:
    head = " | ".join(
        f"{title:>{len(fmt.format(getattr(summaries[0], key)))}}" for title, fmt, key in _COLUMNS
    )
    lines = [head, "-" * len(head)]
    for s in summaries:
        lines.append(" | ".join(fmt.format(getattr(s, key)) for _, fmt, key in _COLUMNS))
    return "\n".join(lines)


def ratios(base: Summary, big: Summary) -> str:
    """Per-client cost at `big` over per-client cost at `base` (1.0 = linear scaling)."""
    scale = big.clients / base.clients

    def per(a: float, b: float) -> str:
        return f"{(b / scale) / a:.2f}" if a > 0 else "n/a"

    return (
        f"{big.mode:>5} cls={big.classes}: per-client ratio {big.clients}/{base.clients}: "
        f"initial {per(base.initial_s, big.initial_s)}, change {per(base.change_s, big.change_s)}, "
        f"srv CPU/change {per(base.change_server_cpu_s, big.change_server_cpu_s)}, "
        f"RSS/client {big.rss_per_client_kb / base.rss_per_client_kb:.2f}"
    )


#: The targets of the issue, for one server process on a 2-core machine.
TARGET_CHANGE_S = 2.0
TARGET_RSS_KB = 30.0


def verdict(s: Summary) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return (
        f"{s.mode:>5} cls={s.classes} N={s.clients}: all connected and ACKed: met; "
        f"change ACKed by all <= {TARGET_CHANGE_S:.0f} s: {mark(s.change_s <= TARGET_CHANGE_S)} "
        f"({s.change_s:.2f} s); one encode per change: {mark(s.encodes == 1)}; "
        f"<= {TARGET_RSS_KB:.0f} KB/client: {mark(s.rss_per_client_kb <= TARGET_RSS_KB)} "
        f"({s.rss_per_client_kb:.1f} KB)"
    )


def _case_directory(root: str, mode: str, classes: int, clients: int) -> str:
    if not root:
        return ""
    directory = Path(root) / f"{mode}-{classes}-{clients}"
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=10_000, help="simulated proxies (ADS streams)")
    parser.add_argument(
        "--baseline-clients", type=int, default=1_000, help="baseline run size for the ratio (0: none)"
    )
    parser.add_argument("--mode", choices=("sotw", "delta", "both"), default="both")
    parser.add_argument("--resources", type=int, default=100, help="clusters (and as many endpoints)")
    parser.add_argument("--classes", default="1", help="proxy classes, comma separated variants (e.g. 1,10)")
    parser.add_argument("--runs", type=int, default=3, help="fresh server processes per case (median)")
    parser.add_argument("--changes", type=int, default=3, help="one-resource changes per run (median)")
    parser.add_argument("--streams-per-connection", type=int, default=100)
    parser.add_argument("--load-processes", type=int, default=1)
    parser.add_argument("--profile", default="", help="directory: cProfile the server in the first run")
    parser.add_argument("--py-spy", default="", help="directory: py-spy the server in the first run")
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        help="frames per traceback: trace the server's per-client allocations (first run at N)",
    )
    parser.add_argument("--json", default="", help="write every run's raw figures to this file")
    args = parser.parse_args(argv)
    fanout_client.self_check()

    modes = ("sotw", "delta") if args.mode == "both" else (args.mode,)
    sizes = [args.clients]
    if 0 < args.baseline_clients < args.clients:
        sizes.insert(0, args.baseline_clients)
    classes = [int(c) for c in args.classes.split(",")]

    summaries: list[Summary] = []
    raw: list[RunResult] = []
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    for mode in modes:
        for klass in classes:
            for clients in sizes:
                results = []
                for run in range(args.runs):
                    profile = sample = ""
                    traced = 0
                    if run == 0 and clients == args.clients:
                        profile = _case_directory(args.profile, mode, klass, clients)
                        sample = _case_directory(args.py_spy, mode, klass, clients)
                        traced = args.tracemalloc
                    result = run_once(args, mode, clients, klass, profile, sample, traced)
                    results.append(result)
                    print(
                        f"# {mode} classes={klass} clients={clients} run {run + 1}: "
                        f"initial {result.initial_s:.2f} s, "
                        f"change {statistics.median(result.change_s):.3f} s, "
                        f"RSS {result.rss_per_client_kb:.1f} KB/client",
                        file=sys.stderr,
                        flush=True,
                    )
                    for phase, text in result.profiles.items():
                        print(f"## server profile, {phase} ({mode}, N={clients})\n{text}", file=sys.stderr)
                raw += results
                summaries.append(summarise(results))

    print(table(summaries))
    print()
    for big in summaries:
        if big.clients != args.clients:
            continue
        for base in summaries:
            if (base.mode, base.classes) == (big.mode, big.classes) and base.clients < big.clients:
                print(ratios(base, big))
    for big in summaries:
        if big.clients == args.clients:
            print(verdict(big))
    first = summaries[0]
    print(
        f"encodes per change: {first.encodes}, new snapshot built in {first.build_ms:.1f} ms "
        f"(naive rebuild: {first.naive_encodes} encodes, {first.naive_ms:.0f} ms); "
        f"idle server RSS {first.rss_idle_mb:.0f} MB; total {time.monotonic() - began:.0f} s; "
        f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in raw], indent=1))
    return 0 if all(s.encodes == 1 for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
