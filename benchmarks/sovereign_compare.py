"""meshcp against sovereign (PyPI; a Python Envoy control plane serving REST/JSON discovery).

    python3 -m venv /tmp/sovereign-venv && /tmp/sovereign-venv/bin/pip install sovereign
    python benchmarks/sovereign_compare.py --services 200 --concurrency 32 --duration 10 --runs 3

The same set of clusters is served by both: the generated mesh (`mesh_manifests`, SMI mode)
is compiled by `meshcp compile` for one pod, and the clusters it would receive (S upstream
EDS clusters with upstream mTLS, its local cluster, the metrics cluster; Envoy's JSON form)
become sovereign's `clusters` template (a Python template returning that list, the cheapest
template sovereign has). meshcp serves them from `meshcp serve --source` as usual.

One request = one proxy fetching its clusters from scratch:
- sovereign: `POST /v3/discovery:clusters` (HTTP/1.1 keep-alive, JSON DiscoveryRequest with the
  pod's node and an empty version) -> 200 with the clusters as JSON;
- meshcp: a new ADS stream (SotW) on an open HTTP/2 connection, the first CDS request carrying
  the pod's node -> the DiscoveryResponse with the clusters (protobuf); then the stream is
  cancelled. This includes what a new stream costs meshcp (authorisation, classification,
  registration), so it is the expensive path of ADS; pushes to open streams are cheaper.

`--concurrency` requests are kept in flight for `--duration` seconds after a warm-up; latency
is per request, throughput is completed requests per second, and server CPU per request comes
from /proc (sovereign: gunicorn master and workers). Each server runs alone on the machine
(the client is this process); sovereign runs with `--workers` worker processes (default 1, as
meshcp's controller is one process) and its access log off (meshcp logs no requests).
Both servers and every child are stopped on exit, errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mesh_manifests as mm
from bench_support import load_average, machine
from controller_process import Controller, meshcp_source
from discovery_fetch import bench_meshcp, bench_sovereign
from processes import terminate_on_sigterm
from sovereign_server import Sovereign, write_config


def compile_clusters(mesh: Path, ref: mm.ProxyRef, shape: mm.Shape) -> list[dict[str, Any]]:
    ns, name = ref.cluster.split("/")[0], mm.pod_name(shape, ref.service, 0)
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshcp",
            "--log-level",
            "error",
            "compile",
            "--source",
            str(mesh),
            "--pod",
            f"{ns}/{name}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    clusters: list[dict[str, Any]] = json.loads(output)["clusters"]
    for cluster in clusters:
        cluster.pop("version", None)
    return clusters


def one_run(args: argparse.Namespace, shape: mm.Shape, workdir: Path) -> dict[str, Any]:
    mesh = workdir / "mesh"
    mm.write_mesh(mesh, shape)
    ref = mm.proxies(shape)[shape.pods]  # the first pod of service 1
    clusters = compile_clusters(mesh, ref, shape)
    write_config(workdir, clusters)
    results: dict[str, Any] = {"clusters": len(clusters)}

    controller = Controller(mesh, workdir / "state", workdir / "serve.log", [])
    try:
        deadline = time.monotonic() + args.timeout
        while controller.get("/readyz", timeout=2)[0] != 200:
            controller.check()
            if time.monotonic() > deadline:
                raise TimeoutError("meshcp not ready")
            time.sleep(0.1)
        result = asyncio.run(bench_meshcp(controller.xds_port, ref, len(clusters), args, controller.cpu))
        results["meshcp"] = asdict(result)
        results["meshcp_rss_mb"] = controller.status_mb("VmRSS")
    finally:
        controller.stop()

    sovereign = Sovereign(args.sovereign, workdir, args.workers)
    try:
        sovereign.wait_ready()
        result = asyncio.run(bench_sovereign(sovereign.port, ref, len(clusters), args, sovereign.cpu))
        results["sovereign"] = asdict(result)
        results["sovereign_rss_mb"] = sovereign.rss_mb()
    finally:
        sovereign.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--pods", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="sovereign worker processes")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--sovereign", default="/tmp/sovereign-venv/bin/sovereign")
    parser.add_argument("--meshcp-rev", default="", metavar="REV")
    parser.add_argument("--json", default="", metavar="FILE")
    args = parser.parse_args()
    if not Path(args.sovereign).exists():
        sys.exit(f"{args.sovereign} not found: install sovereign into its own venv (see the docstring)")
    shape = mm.Shape(args.services, max(1, args.services // 10), args.pods, 5, permissive=False)
    with meshcp_source(args.meshcp_rev):
        print(f"# {machine()}; load average at start {load_average():.2f}", file=sys.stderr)
        runs: list[dict[str, Any]] = []
        with terminate_on_sigterm():
            for n in range(args.runs):
                workdir = Path(tempfile.mkdtemp(prefix="sovereign-compare-"))
                try:
                    runs.append(one_run(args, shape, workdir))
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                m, s = runs[-1]["meshcp"], runs[-1]["sovereign"]
                print(
                    f"  run {n + 1}: meshcp {m['throughput']:.0f}/s p50 {m['p50_ms']:.1f} ms; "
                    f"sovereign {s['throughput']:.0f}/s p50 {s['p50_ms']:.1f} ms",
                    file=sys.stderr,
                )
    print(f"# load average at end {load_average():.2f}", file=sys.stderr)
    print(report(runs, args))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def med(server: str, key: str) -> float:
        return float(statistics.median(r[server][key] for r in runs))

    lines = [
        f"{runs[0]['clusters']} clusters per response, {args.concurrency} requests in flight, "
        f"{args.duration:.0f} s per measurement, median of {len(runs)} runs",
        "",
        "| server | requests/s | p50 ms | p99 ms | server CPU ms/request | server CPU share "
        "| client CPU ms/request | response bytes | RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in ("meshcp", "sovereign"):
        rss = statistics.median(r[f"{server}_rss_mb"] for r in runs)
        cells = [
            server,
            f"{med(server, 'throughput'):,.0f}",
            f"{med(server, 'p50_ms'):.1f}",
            f"{med(server, 'p99_ms'):.1f}",
            f"{med(server, 'cpu_ms_per_request'):.2f}",
            f"{med(server, 'cpu_ms_per_request') * med(server, 'throughput') / 1000:.0%}",
            f"{med(server, 'client_cpu_ms_per_request'):.2f}",
            f"{med(server, 'response_bytes'):,.0f}",
            f"{rss:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = [
        f"{med('meshcp', 'throughput') / med('sovereign', 'throughput'):.1f}x",
        *(
            f"{med('meshcp', k) / med('sovereign', k):.2f}"
            for k in ("p50_ms", "p99_ms", "cpu_ms_per_request")
        ),
        "",  # CPU share
        f"{med('meshcp', 'client_cpu_ms_per_request') / med('sovereign', 'client_cpu_ms_per_request'):.2f}",
        f"{med('meshcp', 'response_bytes') / med('sovereign', 'response_bytes'):.2f}",
        "",
    ]
    lines.append("| ratio meshcp/sovereign | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
