"""ADS fan-out: N simulated Envoys, one server process, one-resource change to all of them.

    python benchmarks/xds_fanout.py --clients 10000 --mode both --resources 100 --runs 3

Processes (multiprocessing spawn, synchronised through pipes, never sleeps): this
orchestrator; one server process running meshcp's xDS stack (fanout_server.py:
SnapshotCache, AggregatedDiscoveryService, XdsServer over grpclib, Metrics); one or more
load processes simulating the proxies (fanout_client.py: raw HTTP/2, many streams per
connection, far cheaper per message than the server so that it is not the bottleneck).

Per run: connect N streams and wait until each ACKed CDS, EDS, LDS and RDS; then, for
each of --changes changes, build a new snapshot with one ClusterLoadAssignment changed
(reusing every other encoded Resource), set it, and wait until every one of the N streams
holds it, by the server's own state (`fanout_server.py`). Every number is the median
over --runs fresh server processes. The baseline is a run with --baseline-clients (1,000)
proxies in the same invocation: the ratio of per-client costs at N to those at the
baseline shows whether the server scales linearly (1.0) or degrades with the number of
streams (> 1.0). The encode column's baseline is a naive rebuild that encodes every
resource again.

--py-spy DIR samples the server during each phase of the first run at N (py-spy from
PyPI) and prints the top functions; --profile DIR does the same with cProfile.
See RESULTS.md for figures and findings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import fanout_client
import fanout_server
from control_pipe import Child
from fanout_client import LoadSpec, Plan
from fanout_report import RunResult, Summary, ratios, summarise, table, verdict
from fanout_workload import endpoint_names, route_names
from py_spy import PySpy

PHASE_TIMEOUT = 300.0


def _sampler(directory: str, pid: int | None, phase: str) -> PySpy | None:
    """py-spy sampling the server process during one phase (with --py-spy, first run at N)."""
    if not directory or pid is None:
        return None
    return PySpy(pid, Path(directory) / f"{phase}.txt", label="server", rate=250, attach=True, top=15)


def _stop(sampler: PySpy | None) -> None:
    if sampler is not None:
        sampler.stop()


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
    spec = fanout_server.ServerSpec(args.resources, classes, profile, traced)
    server = Child("server", fanout_server.run, spec, PHASE_TIMEOUT)
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
            load_spec = LoadSpec(
                "127.0.0.1", hello["port"], first, count, classes, args.streams_per_connection, plan
            )
            loads.append(Child(f"load-{n}", fanout_client.run, load_spec, PHASE_TIMEOUT))
            first += count
        for load in loads:
            load.recv(timeout=120)

        sampler = _sampler(sample, pid, "initial")
        server.send("initial", clients)
        started = time.monotonic()
        for load in loads:
            load.send("connect")
        ready = [load.recv() for load in loads]
        initial = server.recv()
        _stop(sampler)
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

        sampler = _sampler(sample, pid, "change")
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
        _stop(sampler)
        return result
    finally:
        for load in loads:
            load.stop()
        server.stop()


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
