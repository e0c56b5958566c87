"""Mesh scale: `meshcp serve --source DIR` on a generated mesh, one simulated Envoy per pod.

    python benchmarks/mesh_scale.py --services 50 --pods 5 --mode smi --xds both --runs 3

Per run (fresh directory, CA state and controller each time):

1. `mesh_manifests.write_mesh`: S services x P pods in N namespaces, K allowed clients per
   service (SMI) or permissive mode, one TrafficSplit per namespace, a MeshConfig.
2. `python -m meshcp serve --source DIR --insecure-xds` in its own process (loopback ports),
   and one load process (`mesh_client.py`, raw HTTP/2, spawned before the controller so its
   start-up is not timed) that opens one ADS stream per pod, SotW or delta, with the pod's node
   id, as soon as the xDS port accepts connections.
3. Cold convergence: controller spawn → the last proxy converged (ACKed every type, holding
   every name it subscribed to). Also: spawn → /readyz 200 (first full compile done).
4. Changes, each measured from the file write (or the `meshcp ca rotate` call) to the last
   ACK sent by any proxy that received something: latency p50/p99/max over the affected
   proxies, their count, resources pushed by type, and from the controller's /metrics the
   encodes (`meshcp_cache_encodes_total`), responses and resources sent; controller CPU (utime +
   stime from /proc/PID/stat) and bytes received by the proxies (= bytes sent). A change is
   complete when every proxy is converged again and no response arrived for --settle
   seconds (the settle time is not part of any latency):
   - `endpoint`: one pod's IP changes (its service's file is rewritten);
   - `target`: a new TrafficTarget lets one more identity reach one service (SMI mode);
   - `split`: one TrafficSplit goes from 50/50 to 90/10;
   - `rotate`: `meshcp ca rotate` on the controller's state directory: a *root* rotation
     (trust A+B pushed, every workload certificate re-issued from B, A dropped). meshcp
     has no command that renews one identity's certificate on demand; per-identity
     renewal happens on a timer (`--cert-validity`, renewal at ~70 % of the lifetime);
   - `renew`: one identity's certificate renewal (needs `--cert-validity`, written into
     the generated MeshConfig too, whose `certValidity` overrides the command line). The
     internal CA back-dates certificates by 5 min and renewal is due with 30-40 % of that
     longer lifetime left, so below ~200 s certificates are renewed continuously; `300s`
     renews each 60-120 s after its issuance. The identity of service 1 is picked;
     /metrics is polled until its
     `meshcp_workload_certificate_installed_timestamp_seconds` changes, and latency runs
     from that timestamp (the controller's wall clock, mapped onto ours) to each of its
     proxies' last ACK of an SDS response carrying `service-cert` (each proxy's own
     certificate, under the name every proxy shares); the affected proxies are that
     identity's. Other identities renew on their own timers meanwhile, so
     responses, encodes, CPU and bytes of this row include their renewals too.
5. Peak RSS (VmHWM of the controller) and total CPU at the end.

The debounce window (MeshConfig `debounceWindow`, 100 ms; the controller's store is built
with the same default) is part of every change latency and is reported beside it.

Every child (controller, load processes, py-spy) is stopped on exit, errors and Ctrl-C.
Run it under `flock /tmp/meshcp-bench.lock` on a shared machine; the load average is
printed at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import mesh_manifests as mm
import mesh_resources
from bench_support import load_average, machine
from controller_process import exported, meshcp_source, use_source
from mesh_changes import CHANGES
from mesh_report import median_run, ratios, table
from mesh_run import Run, RunResult
from processes import terminate_on_sigterm


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--namespaces", type=int, default=0, help="default: services / 10, at least 1")
    parser.add_argument("--pods", type=int, default=5, help="pods (proxies) per service")
    parser.add_argument("--sources", type=int, default=5, help="allowed client identities per service (SMI)")
    parser.add_argument("--mode", choices=["smi", "permissive", "both"], default="smi")
    parser.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="MeshConfig pruneUnreachableUpstreams: false: every proxy gets every service "
        "(the default, as in meshcp, gives each proxy only the services it may reach)",
    )
    parser.add_argument("--xds", choices=["sotw", "delta", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--changes",
        default=",".join(CHANGES[:-1]),
        help=f"comma-separated subset of {CHANGES} (default: all but renew, which needs --cert-validity)",
    )
    parser.add_argument("--settle", type=float, default=1.5, help="quiet seconds that end a change")
    parser.add_argument("--timeout", type=float, default=600.0, help="per phase")
    parser.add_argument("--load-processes", type=int, default=1)
    parser.add_argument("--streams-per-connection", type=int, default=100)
    parser.add_argument(
        "--cert-validity",
        default="",
        help="workload certificate lifetime (serve's --cert-validity and the MeshConfig's certValidity)",
    )
    parser.add_argument(
        "--py-spy",
        default="",
        metavar="DIR",
        help="sample the controller per phase in the first run (py-spy)",
    )
    parser.add_argument(
        "--baseline",
        default="",
        metavar="REV",
        help="also run REV's controller (git archive), alternating run by run with the one measured, "
        "and print the ratio of the medians (measured / baseline)",
    )
    parser.add_argument("--json", default="", metavar="FILE", help="write every run and the medians")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument(
        "--meshcp-rev",
        default="",
        metavar="REV",
        help="run the controller (and load processes) from `git archive REV src` instead of the working tree",
    )
    args = parser.parse_args()
    args.changes = [c for c in args.changes.split(",") if c]
    for name in args.changes:
        if name not in CHANGES:
            parser.error(f"unknown change {name!r}")
    modes = ["smi", "permissive"] if args.mode == "both" else [args.mode]
    xds_modes = ["sotw", "delta"] if args.xds == "both" else [args.xds]
    mesh_resources.self_check()
    if not args.baseline:
        with meshcp_source(args.meshcp_rev):
            measure(args, modes, xds_modes)
        return
    base = os.environ.get("PYTHONPATH")
    with contextlib.ExitStack() as stack:
        measured = stack.enter_context(exported(args.meshcp_rev or "HEAD"))
        baseline = stack.enter_context(exported(args.baseline))
        sources = {args.meshcp_rev or "HEAD": measured, args.baseline: baseline}
        measure(args, modes, xds_modes, {k: partial(use_source, v, base) for k, v in sources.items()})


def measure(
    args: argparse.Namespace,
    modes: list[str],
    xds_modes: list[str],
    sources: dict[str, Callable[[], None]] | None = None,
) -> None:
    """`sources`: with a baseline, how to switch to each controller (by label, measured
    first); the runs alternate between them so that both see the same machine."""
    print(f"# {machine()}; load average at start {load_average():.2f}", file=sys.stderr)
    started = time.monotonic()
    switch = sources or {"": lambda: None}
    summaries: list[dict[str, Any]] = []
    every: list[dict[str, Any]] = []
    with terminate_on_sigterm():
        for mode in modes:
            shape = mm.Shape(
                args.services,
                args.namespaces or max(1, args.services // 10),
                args.pods,
                args.sources,
                permissive=mode == "permissive",
                prune=args.prune,
            )
            for xds in xds_modes:
                runs: dict[str, list[RunResult]] = {label: [] for label in switch}
                for n in range(args.runs):
                    for label, use in switch.items():
                        use()
                        result = _one_run(args, shape, xds, n)
                        runs[label].append(result)
                        every.append({"source": label, **asdict(result)})
                        print(
                            f"  {mode}/{xds} {label} run {n + 1}: cold {result.cold_s:.2f} s, "
                            + ", ".join(
                                f"{c.name} p99 {c.p99_ms:.0f} ms ({c.affected})" for c in result.changes
                            )
                            + f", peak RSS {result.peak_rss_mb:.0f} MB",
                            file=sys.stderr,
                        )
                medians = {label: median_run(found) for label, found in runs.items()}
                for label, summary in medians.items():
                    summary["source"] = label
                    summaries.append(summary)
                    if label:
                        print(f"#### controller: {label}")
                    print(table(summary, shape.debounce_ms), flush=True)
                if len(medians) == 2:
                    print(ratios(*medians.values()), flush=True)
    print(
        f"# load average at end {load_average():.2f}; total {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": every, "medians": summaries}, indent=1))


def _one_run(args: argparse.Namespace, shape: mm.Shape, xds: str, n: int) -> RunResult:
    workdir = Path(tempfile.mkdtemp(prefix="mesh-scale-"))
    run = Run(args, shape, xds == "delta", workdir)
    profile = None
    if args.py_spy and n == 0:
        profile = Path(args.py_spy)
        profile.mkdir(parents=True, exist_ok=True)
    try:
        return run.execute(profile)
    finally:
        run.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
