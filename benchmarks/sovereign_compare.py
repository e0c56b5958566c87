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
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mesh_manifests as mm
from bench_support import machine
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from mesh_client import InfoCache, parse_response
from mesh_scale import CLK_TCK, Controller, export_source, free_port, load_average, percentile

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest
from meshcp.cache import resource_types

SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
TEMPLATE = '''"""sovereign template: the clusters meshcp compiled for one pod (clusters.json)."""
import json
import pathlib

CLUSTERS = json.loads((pathlib.Path(__file__).parent / "clusters.json").read_text())


def call(**kwargs):
    return CLUSTERS
'''


class RawCodec(CodecBase):
    """Bytes in, bytes out: the client must cost far less than the server it measures."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


@dataclass
class Result:
    server: str
    requests: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    response_bytes: int
    resources: int
    client_cpu_ms_per_request: float  # this process: is the client the bottleneck?


def process_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def children(pid: int) -> list[int]:
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[1]) == pid:
                    out.append(int(entry.name))
    return out


async def drive(
    fetch: Callable[[], Awaitable[int]], concurrency: int, warmup: float, duration: float
) -> tuple[list[float], float, int, int]:
    """Keep `concurrency` fetches in flight; latencies of those that started after the warm-up,
    the measured seconds, the response size and how many fetches completed in all."""
    latencies: list[float] = []
    size = completed = 0
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def worker() -> None:
        nonlocal size, completed
        while True:
            began = time.monotonic()
            if began >= stop_at:
                return
            size = await fetch()
            completed += 1
            if began >= measure_from:
                latencies.append(time.monotonic() - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, min(time.monotonic(), stop_at + 60) - measure_from, size, completed


# --- meshcp ------------------------------------------------------------------------------------


async def bench_meshcp(
    port: int, node: mm.ProxyRef, expected: int, args: argparse.Namespace, cpu: Callable[[], float]
) -> Result:
    request = bytes(
        DiscoveryRequest(node=Node(id=node.node_id, cluster=node.cluster), type_url=resource_types.CLUSTER)
    )
    channels = [Channel("127.0.0.1", port, codec=RawCodec()) for _ in range(-(-args.concurrency // 50))]
    counter = 0
    cache = InfoCache()
    checked = False

    async def fetch() -> int:
        nonlocal counter, checked
        counter += 1
        channel = channels[counter % len(channels)]
        async with channel.request(SOTW, Cardinality.STREAM_STREAM, bytes, bytes) as stream:
            await stream.send_message(request)
            reply = await stream.recv_message()
            await stream.cancel()
        assert isinstance(reply, bytes)
        if not checked:
            got = len(parse_response(reply, 0, len(reply), False, cache).infos)
            if got != expected:
                raise RuntimeError(f"meshcp sent {got} clusters, expected {expected}")
            checked = True
        return len(reply)

    try:
        await drive(fetch, args.concurrency, 0.0, 1.0)  # connections up, class compiled
        cpu0, own0 = cpu(), time.process_time()
        latencies, seconds, size, completed = await drive(fetch, args.concurrency, args.warmup, args.duration)
        used = (cpu() - cpu0) / completed * len(latencies)
        client = (time.process_time() - own0) / completed
    finally:
        for channel in channels:
            channel.close()
    return summarize("meshcp", latencies, seconds, used, size, expected, client)


# --- sovereign --------------------------------------------------------------------------------


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client (POST, Content-Length responses)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        self.writer.close()


async def bench_sovereign(
    port: int, node: mm.ProxyRef, expected: int, args: argparse.Namespace, cpu: Callable[[], float]
) -> Result:
    body = json.dumps(
        {
            "node": {
                "id": node.node_id,
                "cluster": node.cluster,
                "user_agent_name": "envoy",
                "user_agent_build_version": {"version": {"major_number": 1, "minor_number": 40, "patch": 0}},
            },
            "version_info": "",
            "resource_names": [],
            "type_url": resource_types.CLUSTER,
        }
    ).encode()
    request = (
        f"POST /v3/discovery:clusters HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: list[HttpConnection] = []
    opened: list[HttpConnection] = []
    checked = False

    async def fetch() -> int:
        nonlocal checked
        connection = idle.pop() if idle else None
        if connection is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
            connection = HttpConnection(reader, writer)
            opened.append(connection)
        status, reply = await connection.post(request)
        idle.append(connection)
        if status != 200:
            raise RuntimeError(f"sovereign answered {status}: {reply[:200]!r}")
        if not checked:
            got = len(json.loads(reply)["resources"])
            if got != expected:
                raise RuntimeError(f"sovereign sent {got} clusters, expected {expected}")
            checked = True
        return len(reply)

    try:
        await drive(fetch, args.concurrency, 0.0, 1.0)
        cpu0, own0 = cpu(), time.process_time()
        latencies, seconds, size, completed = await drive(fetch, args.concurrency, args.warmup, args.duration)
        used = (cpu() - cpu0) / completed * len(latencies)
        client = (time.process_time() - own0) / completed
    finally:
        for connection in opened:
            connection.close()
    return summarize("sovereign", latencies, seconds, used, size, expected, client)


def summarize(
    server: str, latencies: list[float], seconds: float, cpu: float, size: int, expected: int, client: float
) -> Result:
    count = len(latencies)
    return Result(
        server,
        count,
        seconds,
        count / seconds if seconds > 0 else 0.0,
        1000 * percentile(latencies, 0.5),
        1000 * percentile(latencies, 0.99),
        1000 * cpu / count if count else 0.0,
        size,
        expected,
        1000 * client,
    )


class Sovereign:
    def __init__(self, executable: str, workdir: Path, workers: int) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(
            SOVEREIGN_CONFIG=f"file://{workdir / 'sovereign.yaml'}",
            SOVEREIGN_HOST="127.0.0.1",
            SOVEREIGN_PORT=str(self.port),
            SOVEREIGN_WORKERS=str(workers),
            SOVEREIGN_ENABLE_ACCESS_LOGS="false",
        )
        self._log = (workdir / "sovereign.log").open("wb")
        self.process = subprocess.Popen(
            [executable], env=env, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sovereign exited with {self.process.returncode}; see {self._log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise TimeoutError("sovereign did not open its port")

    def cpu(self) -> float:
        return process_cpu(children(self.process.pid))

    def rss_mb(self) -> float:
        total = 0.0
        for pid in children(self.process.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


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
    (workdir / "clusters.json").write_text(json.dumps(clusters))
    (workdir / "clusters.py").write_text(TEMPLATE)
    spec = {"protocol": "python", "serialization": "raw", "path": str(workdir / "clusters.py")}
    (workdir / "sovereign.yaml").write_text(
        json.dumps({"templates": {"default": [{"type": "clusters", "spec": spec}]}})
    )
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
    snapshot = export_source(args.meshcp_rev) if args.meshcp_rev else None
    print(f"# {machine()}; load average at start {load_average():.2f}", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
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
    finally:
        signal.signal(signal.SIGTERM, previous)
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)
    print(f"# load average at end {load_average():.2f}", file=sys.stderr)
    print(report(runs, args))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
