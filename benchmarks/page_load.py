"""What the KPI endpoints cost the control plane: push latency of mesh changes with and
without 50 concurrent dashboard users, side by side in the same run.

    python benchmarks/page_load.py --services 100 --pods 2 --users 50 --runs 3

Per run, twice on a fresh mesh, controller and proxies (`mesh_run.Run`, see
`mesh_scale.py`): once idle, once while `--users` clients load the KPI pages in a loop
(each load is what a browser of `/dashboard` fetches: the page, its data, and a
TrafficMetrics list). The controller runs with `--prometheus-url` pointing at a real
Prometheus (Debian's `prometheus`) that scrapes an exporter of Envoy-shaped series for the
whole mesh (every allowed client → service edge, as the sidecars would export them), so
each page load makes the controller query a Prometheus holding the mesh's series.

Figures: each change's p50/p99 from file write to the last ACK of every affected proxy
(the simulated proxies' own timing, as in `mesh_scale.py`), the page loads completed and
their latency, the controller's CPU. The idle and loaded runs alternate, so machine drift
hits both. Every child (controller, load processes, Prometheus, exporter) is stopped on
exit. Run it under `flock /tmp/meshcp-bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import mesh_manifests as mm
import mesh_resources
from bench_support import load_average, machine, percentile
from controller_process import Controller
from mesh_changes import CHANGES
from mesh_run import Run
from processes import free_port, terminate_on_sigterm

#: What one browser load of the dashboard fetches, and one TrafficMetrics list.
PAGE = "/dashboard"
DATA = "/dashboard/data"
METRICS_LIST = "/apis/metrics.smi-spec.io/v1alpha1/namespaces/{namespace}/deployments"


def series(shape: mm.Shape) -> str:
    """Envoy-shaped client-side series for every allowed edge of the mesh (one pod per
    client identity), plus each service's local cluster: what Prometheus holds for it."""
    lines = []
    for index in range(shape.services):
        ns, svc = mm.namespace(shape, index), mm.service(shape, index)
        lines.append(
            f'envoy_cluster_upstream_cx_total{{source_namespace="{ns}",source_pod="{svc}-0",'
            f'source_service_account="{svc}",local_service="{svc}"}} 10'
        )
        for client in mm.default_sources(shape, index):
            cns, csvc = mm.namespace(shape, client), mm.service(shape, client)
            labels = (
                f'source_namespace="{cns}",source_pod="{csvc}-0",source_service_account="{csvc}",'
                f'destination_namespace="{ns}",destination_service="{svc}",destination_port="8080"'
            )
            lines.append(f"envoy_cluster_upstream_rq_total{{{labels}}} 1000")
            lines.append(f'envoy_cluster_upstream_rq_xx{{{labels},envoy_response_code_class="2"}} 990')
            lines.append(f'envoy_cluster_upstream_rq_xx{{{labels},envoy_response_code_class="5"}} 10')
            lines.append(f"envoy_cluster_upstream_cx_total{{{labels}}} 4")
            lines.append(f"envoy_cluster_upstream_cx_active{{{labels}}} 2")
            lines.append(f"envoy_cluster_ssl_handshake{{{labels}}} 4")
            for le, count in (("1", 500), ("5", 900), ("25", 990), ("+Inf", 1000)):
                lines.append(f'envoy_cluster_upstream_rq_time_bucket{{{labels},le="{le}"}} {count}')
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def exporter(text: str) -> Iterator[int]:
    """Serves `text` at /metrics on loopback from a thread; yields the port."""
    body = text.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def prometheus(target: str, workdir: Path) -> Iterator[str]:
    """A real Prometheus scraping `target` every second; yields its URL once it has data."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus is not installed (apt-get install -y prometheus)")
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        f"scrape_configs:\n- job_name: sidecars\n  static_configs: [{{targets: ['{target}']}}]\n"
    )
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited {process.returncode}; see {log.name}")
            with contextlib.suppress(OSError):
                query = "/api/v1/query?query=count(envoy_cluster_upstream_rq_total)"
                with urllib.request.urlopen(url + query, timeout=2) as answer:
                    if b'"value"' in answer.read():
                        break
            if time.monotonic() > deadline:
                raise TimeoutError("prometheus had no data after 60 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class PageLoads:
    """`users` clients loading the KPI pages in a loop from a thread of its own, for as
    long as the context is open; counts loads, failures and their latency."""

    def __init__(self, users: int, namespace: str) -> None:
        self.users = users
        self.paths = (PAGE, DATA, METRICS_LIST.format(namespace=namespace))
        self.loads = 0
        self.failures: dict[str, int] = {}
        self.latencies: list[float] = []
        self.elapsed = 0.0

    @contextlib.contextmanager
    def running(self, controller: Controller) -> Iterator[None]:
        stop = threading.Event()
        thread = threading.Thread(
            target=lambda: asyncio.run(self._run(controller.http_port, stop)), daemon=True
        )
        started = time.monotonic()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(60)
            self.elapsed = time.monotonic() - started

    async def _run(self, port: int, stop: threading.Event) -> None:
        base = f"http://127.0.0.1:{port}"
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def user() -> None:
                while not stop.is_set():
                    began = time.monotonic()
                    ok = True
                    for path in self.paths:
                        try:
                            async with session.get(base + path) as response:
                                await response.read()
                                if response.status != 200:
                                    ok = False
                                    key = f"{path} {response.status}"
                                    self.failures[key] = self.failures.get(key, 0) + 1
                        except (aiohttp.ClientError, TimeoutError) as error:
                            ok = False
                            key = f"{path} {type(error).__name__}"
                            self.failures[key] = self.failures.get(key, 0) + 1
                    if ok:
                        self.loads += 1
                        self.latencies.append(time.monotonic() - began)

            await asyncio.gather(*(user() for _ in range(self.users)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--pods", type=int, default=2)
    parser.add_argument("--sources", type=int, default=5)
    parser.add_argument("--users", type=int, default=50, help="concurrent dashboard users")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--xds", choices=["sotw", "delta"], default="sotw")
    parser.add_argument("--changes", default="endpoint,target,split")
    parser.add_argument("--settle", type=float, default=1.5)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    args.changes = [c for c in args.changes.split(",") if c]
    for name in args.changes:
        if name not in CHANGES or name in ("rotate", "renew"):
            parser.error(f"unsupported change {name!r}")
    # what mesh_run.Run reads of mesh_scale's options
    args.load_processes, args.streams_per_connection, args.cert_validity = 1, 100, ""
    mesh_resources.self_check()
    shape = mm.Shape(args.services, max(1, args.services // 10), args.pods, args.sources, permissive=False)
    print(f"# {machine()}; load average at start {load_average():.2f}", file=sys.stderr)
    began = time.monotonic()
    rows: dict[str, list[dict[str, Any]]] = {"idle": [], "loaded": []}
    with (
        terminate_on_sigterm(),
        tempfile.TemporaryDirectory(prefix="page-load-") as top,
        exporter(series(shape)) as port,
        prometheus(f"127.0.0.1:{port}", Path(top)) as url,
    ):
        args.controller_args = ["--prometheus-url", url]
        for n in range(args.runs):
            for condition in ("idle", "loaded"):
                row = one_run(args, shape, condition, Path(top))
                rows[condition].append(row)
                print(f"  run {n + 1} {condition}: {row}", file=sys.stderr)
    print(report(args, rows))
    print(
        f"# load average at end {load_average():.2f}; total {time.monotonic() - began:.0f} s",
        file=sys.stderr,
    )


def one_run(args: argparse.Namespace, shape: mm.Shape, condition: str, top: Path) -> dict[str, Any]:
    loads = PageLoads(args.users, mm.namespace(shape, 0))
    args.during_changes = loads.running if condition == "loaded" else None
    workdir = Path(tempfile.mkdtemp(prefix=f"{condition}-", dir=top))
    run = Run(args, shape, args.xds == "delta", workdir)
    try:
        result = run.execute(None)
    finally:
        run.close()
        shutil.rmtree(workdir, ignore_errors=True)
    row: dict[str, Any] = {c.name: (c.p50_ms, c.p99_ms, c.cpu_s, c.note) for c in result.changes}
    if condition == "loaded":
        row["loads"] = loads.loads
        row["loads_per_s"] = loads.loads / loads.elapsed if loads.elapsed else 0.0
        row["load_p50_ms"] = 1000 * statistics.median(loads.latencies) if loads.latencies else 0.0
        row["load_p99_ms"] = 1000 * percentile(loads.latencies, 99) if loads.latencies else 0.0
        row["failures"] = dict(loads.failures)
    return row


def report(args: argparse.Namespace, rows: dict[str, list[dict[str, Any]]]) -> str:
    def med(condition: str, change: str, index: int) -> float:
        return float(statistics.median(r[change][index] for r in rows[condition]))

    lines = [
        f"{args.services} services x {args.pods} pods, {args.xds}, {args.users} users, "
        f"median of {args.runs} runs",
        "",
        "| change | idle p50 / p99 (ms) | loaded p50 / p99 (ms) | p99 ratio "
        "| controller CPU idle / loaded (s) |",
        "|---|---|---|---|---|",
    ]
    for change in args.changes:
        idle = (med("idle", change, 0), med("idle", change, 1), med("idle", change, 2))
        loaded = (med("loaded", change, 0), med("loaded", change, 1), med("loaded", change, 2))
        ratio = loaded[1] / idle[1] if idle[1] else float("nan")
        lines.append(
            f"| {change} | {idle[0]:.0f} / {idle[1]:.0f} | {loaded[0]:.0f} / {loaded[1]:.0f} | {ratio:.2f}x "
            f"| {idle[2]:.2f} / {loaded[2]:.2f} |"
        )
    loaded_rows = rows["loaded"]
    lines += [
        "",
        f"page loads during the changes: {statistics.median(r['loads_per_s'] for r in loaded_rows):.1f}/s "
        f"(p50 {statistics.median(r['load_p50_ms'] for r in loaded_rows):.0f} ms, "
        f"p99 {statistics.median(r['load_p99_ms'] for r in loaded_rows):.0f} ms); "
        f"failures {[r['failures'] for r in loaded_rows]}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
