"""Sidecar injector under load: concurrent admission requests against the real HTTPS server.

    python benchmarks/injector_load.py --concurrency 200 --requests 2000 --runs 3

Three processes (multiprocessing spawn; synchronised through pipes, never sleeps):

- a minimal Kubernetes API (aiohttp): GET namespace, GET MeshConfig (404: defaults), POST
  Secret. kmock's emulator slows down per Secret as its request log grows, which would be
  measured instead of the injector; this answers at once, like a real API server under no
  load;
- the injector, started exactly as `meshcp inject` starts it (`run_injector`: TLS files, the
  internal CA from a state directory, kubeconfig);
- this load generator: `--concurrency` requests in flight at all times over keep-alive TLS
  connections (as the API server calls webhooks), each a ReplicaSet's pod in a monitored
  namespace, so every request is a full injection: decision, xDS client certificate (new
  ECDSA P-256 key), bootstrap Secret, JSONPatch.

Per run: a fresh injector, `--warmup` requests, then `--requests` timed ones. Reported per
workload as the median over `--runs`: throughput, p50/p99 latency, and the injector's CPU
per admission (utime+stime of its process, threads included), from which "admissions per
0.5 CPU-second" compares with the sizing OSM published for its injector (quoted in the
report). The `skip` workload (pods in an unmonitored namespace) is the floor: HTTP, TLS
and the decision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from bench_support import machine
from processes import cpu_seconds

from meshcp.certs import DirectoryStore, InternalCA
from meshcp.certs.issuance import xds_server_request
from meshcp.certs.setup import CaSettings
from meshcp.injector.server import run_injector
from meshcp.injector.settings import InjectorSettings

REPO = Path(__file__).resolve().parents[1]

MONITORED = "bookstore"
PLAIN = "plain"
SERVER_NAME = "meshcp-injector.meshcp-system.svc"


# --- the Kubernetes API -----------------------------------------------------------------------


def serve_api(pipe: Connection) -> None:
    async def namespace(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        labels = {"meshcp.dev/monitored-by": "meshcp"} if name == MONITORED else {}
        return web.json_response(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        )

    async def mesh_config(request: web.Request) -> web.Response:
        status = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
        return web.json_response({"apiVersion": "v1", **status}, status=404)

    async def create_secret(request: web.Request) -> web.Response:
        return web.json_response(await request.json(), status=201)

    async def main() -> None:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_get("/api/v1/namespaces/{name}", namespace)
        app.router.add_get("/apis/config.meshcp.dev/v1alpha1/meshconfigs/{name}", mesh_config)
        app.router.add_post("/api/v1/namespaces/{ns}/secrets", create_secret)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        pipe.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        await runner.cleanup()

    asyncio.run(main())


# --- the injector -----------------------------------------------------------------------------


@dataclass
class InjectorSpec:
    directory: str
    api_port: int


def serve_injector(pipe: Connection, spec: InjectorSpec) -> None:
    directory = Path(spec.directory)
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "api", "cluster": {"server": f"http://127.0.0.1:{spec.api_port}"}}],
                "users": [{"name": "injector", "user": {"token": "benchmark"}}],
                "contexts": [{"name": "api", "context": {"cluster": "api", "user": "injector"}}],
                "current-context": "api",
            }
        )
    )
    settings = InjectorSettings(
        tls_cert=directory / "tls.crt",
        tls_key=directory / "tls.key",
        host="127.0.0.1",
        port=0,
        kubeconfig=kubeconfig,
        ca=CaSettings(state_dir=directory / "ca"),
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(
            run_injector(settings, stop, ready=lambda port: pipe.send({"port": port, "pid": os.getpid()}))
        )
        await loop.run_in_executor(None, pipe.recv)
        stop.set()
        await task

    asyncio.run(main())


async def prepare(directory: Path) -> str:
    """The controller's CA (as `meshcp serve` leaves it) and the webhook's certificate."""
    ca = await InternalCA.open(DirectoryStore(directory / "ca"))
    issued = await ca.issue(xds_server_request([SERVER_NAME]))
    (directory / "tls.crt").write_text(issued.chain_pem)
    (directory / "tls.key").write_text(issued.private_key_pem)
    return await ca.trust_bundle()


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Measured:
    workload: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_s: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_admission(self) -> float:
        return self.cpu_s / self.requests * 1000

    @property
    def per_half_cpu_second(self) -> float:
        return 0.5 / (self.cpu_s / self.requests)


def pod() -> dict[str, Any]:
    """A ReplicaSet's pod: generateName, token volume, an HTTP and a TCP probe."""
    probe = {"periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "bookstore-v1-5c7f9d8b6-",
            "labels": {"app": "bookstore", "version": "v1", "pod-template-hash": "5c7f9d8b6"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "bookstore-v1-5c7f9d8b6",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "bookstore",
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [], "defaultMode": 420}}],
            "containers": [
                {
                    "name": "bookstore",
                    "image": "openservicemesh/bookstore:v1.2.0",
                    "ports": [{"name": "http", "containerPort": 14001, "protocol": "TCP"}],
                    "livenessProbe": {**probe, "httpGet": {"path": "/liveness", "port": 14001}},
                    "readinessProbe": {**probe, "tcpSocket": {"port": "http"}},
                }
            ],
        },
    }


def body(namespace: str, index: int) -> bytes:
    gvk, gvr = (
        {"group": "", "version": "v1", "kind": "Pod"},
        {"group": "", "version": "v1", "resource": "pods"},
    )
    request = {
        "uid": f"00000000-0000-4000-8000-{index:012d}",
        "kind": gvk,
        "resource": gvr,
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": pod(),
        "dryRun": False,
    }
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    ).encode()


async def load(
    port: int, bundle: str, pid: int, workload: str, concurrency: int, count: int, warmup: int
) -> Measured:
    namespace = MONITORED if workload == "inject" else PLAIN
    context = ssl.create_default_context(cadata=bundle)
    url = f"https://127.0.0.1:{port}/mutate-pod-creation"
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=context)
    latencies: list[float] = []
    bodies = [body(namespace, i) for i in range(max(count, warmup))]
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(data: bytes, record: bool) -> None:
            started = time.perf_counter()
            async with session.post(
                url, data=data, server_hostname=SERVER_NAME, headers={"Content-Type": "application/json"}
            ) as response:
                answer = await response.json()
            if response.status != 200 or answer["response"]["allowed"] is not True:
                raise RuntimeError(f"unexpected answer {response.status}: {answer}")
            if workload == "inject" and "patch" not in answer["response"]:
                raise RuntimeError(f"not injected: {answer}")
            if record:
                latencies.append(time.perf_counter() - started)

        async def run(n: int, record: bool) -> None:
            queue = iter(bodies[:n])

            async def worker() -> None:
                for data in queue:
                    await one(data, record)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await run(warmup, record=False)
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        await run(count, record=True)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
    quantiles = statistics.quantiles(latencies, n=100)
    return Measured(workload, count, seconds, quantiles[49] * 1000, quantiles[98] * 1000, cpu)


def run_once(args: argparse.Namespace, workload: str) -> Measured:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="meshcp-injector-bench-") as scratch:
        bundle = asyncio.run(prepare(Path(scratch)))
        api_pipe, api_end = context.Pipe()
        api = context.Process(target=serve_api, args=(api_end,), name="api")
        api.start()
        injector_pipe, injector_end = context.Pipe()
        injector = None
        try:
            if not api_pipe.poll(60):
                raise TimeoutError("the Kubernetes API did not start")
            api_port = api_pipe.recv()
            injector = context.Process(
                target=serve_injector, args=(injector_end, InjectorSpec(scratch, api_port)), name="injector"
            )
            injector.start()
            if not injector_pipe.poll(120):
                raise TimeoutError("the injector did not start")
            hello = injector_pipe.recv()
            measure = load(
                hello["port"], bundle, hello["pid"], workload, args.concurrency, args.requests, args.warmup
            )
            return asyncio.run(measure)
        finally:
            for pipe, process in ((injector_pipe, injector), (api_pipe, api)):
                if process is not None and process.is_alive():
                    pipe.send("stop")
                    process.join(timeout=30)
                    if process.is_alive():
                        process.terminate()
                        process.join()


def median_of(runs: list[Measured]) -> dict[str, float]:
    return {
        "throughput": statistics.median(r.throughput for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "cpu_ms": statistics.median(r.cpu_ms_per_admission for r in runs),
        "per_half_cpu": statistics.median(r.per_half_cpu_second for r in runs),
    }


def report(args: argparse.Namespace, results: dict[str, list[Measured]], load_average: float) -> str:
    command = ("python benchmarks/injector_load.py " + " ".join(sys.argv[1:])).strip()
    setup = (
        f"Machine: {machine()}; load average {load_average:.1f} when the benchmark started. "
        f"Command: `{command}`. Median of {args.runs} runs, each with a fresh injector process: "
        f"{args.requests} timed requests after {args.warmup} warm-up ones, {args.concurrency} in flight "
        "at all times over keep-alive TLS connections (as the API server calls webhooks). The load "
        "generator and a minimal Kubernetes API run as separate processes on the same machine."
    )
    lines = [
        "## Sidecar injector: concurrent admissions",
        "",
        setup,
        "",
        "| workload | admissions/s | p50 | p99 | injector CPU per admission | admissions per 0.5 CPU-s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for workload, runs in results.items():
        m = median_of(runs)
        lines.append(
            f"| {workload} | {m['throughput']:.0f} | {m['p50_ms']:.1f} ms | {m['p99_ms']:.1f} ms "
            f"| {m['cpu_ms']:.2f} ms | {m['per_half_cpu']:.0f} |"
        )
    lines += [
        "",
        "`inject`: every request is a full injection (decision, xDS client certificate with a new ECDSA "
        "P-256 key from the internal CA, bootstrap Secret created through the API, JSONPatch). `skip`: "
        "pods in an unmonitored namespace (HTTP, TLS, namespace read, decision): the floor.",
    ]
    if "inject" in results:
        m = median_of(results["inject"])
        burst = args.concurrency * m["cpu_ms"] / 1000
        lines += [
            "",
            "OSM sized its injector at ~20 concurrent pod creations per 0.5 CPU. Here an injection costs "
            f"{m['cpu_ms']:.2f} ms of CPU, so {args.concurrency} concurrent pod creations cost "
            f"{burst:.2f} CPU-seconds in all, and 0.5 CPU sustains ~{m['per_half_cpu']:.0f} injections per "
            f"second; with {args.concurrency} requests in flight the p99 answer took {m['p99_ms']:.0f} ms "
            "(the API server's webhook timeout is 10 s).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=400, help="untimed requests (opens the connections)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workload", choices=["inject", "skip", "both"], default="both")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="also write the report here (RESULTS.md holds the reviewed copy)",
    )
    args = parser.parse_args()
    workloads = ["inject", "skip"] if args.workload == "both" else [args.workload]
    load_average = os.getloadavg()[0]
    results: dict[str, list[Measured]] = {}
    for workload in workloads:
        for n in range(args.runs):
            measured = run_once(args, workload)
            print(
                f"{workload} run {n + 1}: {measured.throughput:.0f}/s, p50 {measured.p50_ms:.1f} ms, "
                f"p99 {measured.p99_ms:.1f} ms, CPU {measured.cpu_ms_per_admission:.2f} ms/admission",
                flush=True,
            )
            results.setdefault(workload, []).append(measured)
    text = report(args, results, load_average)
    if args.output is not None:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
