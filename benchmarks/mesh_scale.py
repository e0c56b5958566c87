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
   encodes (`meshcp_cache_encodes`), responses and resources sent; controller CPU (utime +
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
     proxies' last ACK of an SDS response carrying `service-cert:<ns>/<sa>`; the affected
     proxies are that identity's. Other identities renew on their own timers meanwhile, so
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
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import mesh_client
import mesh_manifests as mm
from bench_support import machine, top_functions
from mesh_client import LoadSpec

POLL = 0.05
CHANGES = ("endpoint", "target", "split", "rotate", "renew")
INSTALLED = "meshcp_workload_certificate_installed_timestamp_seconds"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes --------------------------------------------------------------------------------


class Child:
    """A spawned load process and our end of its control pipe."""

    def __init__(self, name: str, target: Callable[..., None], spec: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.pipe, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(target=target, args=(child_end, spec), name=name)
        self.process.start()
        child_end.close()

    def ask(self, *command: Any, timeout: float = 120.0) -> dict[str, Any]:
        self.pipe.send(command)
        return self.recv(timeout)

    def recv(self, timeout: float = 120.0) -> dict[str, Any]:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
        try:
            reply: dict[str, Any] = self.pipe.recv()
        except EOFError:
            raise RuntimeError(f"{self.name} exited (code {self.process.exitcode})") from None
        return reply

    def stop(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, RuntimeError, BrokenPipeError):
            self.pipe.send(("stop",))
            self.recv(timeout=30)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.pipe.close()


class Controller:
    """`meshcp serve` in its own process."""

    def __init__(self, mesh: Path, state: Path, log: Path, extra: list[str]) -> None:
        self.xds_port, self.http_port = free_port(), free_port()
        self.state = state
        command = [
            sys.executable,
            "-m",
            "meshcp",
            "--log-level",
            "warning",
            "serve",
            "--source",
            str(mesh),
            "--insecure-xds",
            "--xds-address",
            f"127.0.0.1:{self.xds_port}",
            "--http-address",
            f"127.0.0.1:{self.http_port}",
            "--state-dir",
            str(state),
            *extra,
        ]
        self._log = log.open("wb")
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"controller exited with {self.process.returncode}; see {self._log.name}")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)

    def status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), b""
        except (urllib.error.URLError, OSError):
            return 0, b""

    def metrics(self) -> dict[str, float]:
        status, body = self.get("/metrics", timeout=60)
        return parse_metrics(body.decode()) if status == 200 else {}

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Spy:
    """py-spy sampling the controller (raw collapsed stacks) during one phase."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.phase = output.stem
        command = [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "100",
            "--gil",  # CPU: only the thread holding the GIL, not idle pool threads
            "-o",
            str(output),
        ]
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command[0] = exe
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.output.exists():
                print(f"## py-spy, controller, {self.phase}\n{top_functions(self.output)}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, controller: Controller, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        controller.check()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"xDS port {port} not open after {timeout:.0f} s")


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$")


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match and not match[1].endswith("_created"):
            out[match[1] + (match[2] or "")] = float(match[3])
    return out


def metric_delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in after.items():
        if key.startswith(prefix):
            delta = value - before.get(key, 0.0)
            if delta:
                label = key[len(prefix) :].strip("{}").replace('type="', "").rstrip('"') or "total"
                out[label] = delta
    return out


def load_average() -> float:
    return os.getloadavg()[0]


# --- one run ---------------------------------------------------------------------------------


@dataclass
class ChangeResult:
    name: str
    affected: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    responses: int = 0
    pushed: dict[str, int] = field(default_factory=dict)
    encodes: float = 0.0
    resources_sent: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0
    bytes_sent: int = 0
    unconverged: int = 0
    note: str = ""


@dataclass
class RunResult:
    mode: str
    xds: str
    services: int
    proxies: int
    objects: int
    listen_s: float = 0.0
    idle_rss_mb: float = 0.0  # when the xDS port opened (imports, CA; nothing compiled)
    readyz_s: float = 0.0
    cold_s: float = 0.0  # spawn -> last proxy converged
    cold_p50_s: float = 0.0
    cold_cpu_s: float = 0.0
    cold_rss_mb: float = 0.0
    cold_bytes: int = 0
    cold_encodes: float = 0.0
    cold_resources_sent: float = 0.0
    client_cpu_s: float = 0.0
    changes: list[ChangeResult] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    total_cpu_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Run:
    def __init__(self, args: argparse.Namespace, shape: mm.Shape, delta: bool, workdir: Path) -> None:
        self.args = args
        self.shape = shape
        self.delta = delta
        self.workdir = workdir
        self.mesh = workdir / "mesh"
        self.refs = mm.proxies(shape)
        self.objects = mm.write_mesh(self.mesh, shape)
        if args.cert_validity:
            # the mesh's MeshConfig sets the certificate lifetime over the command line's
            config = mm.mesh_config(shape)
            config["spec"]["certValidity"] = args.cert_validity
            mm.write_documents(self.mesh, "meshconfig.yaml", [config])
        self.result = RunResult(
            "permissive" if shape.permissive else "smi",
            "delta" if delta else "sotw",
            shape.services,
            len(self.refs),
            self.objects,
        )
        self.loads: list[Child] = []
        self.controller: Controller | None = None
        self.spy: Spy | None = None
        self.profile: Path | None = None

    def close(self) -> None:
        for load in self.loads:
            load.stop()
        if self.spy is not None:
            self.spy.stop()
        if self.controller is not None:
            self.controller.stop()

    def ask_all(self, *command: Any, timeout: float = 120.0) -> list[dict[str, Any]]:
        for load in self.loads:
            load.pipe.send(command)
        return [load.recv(timeout) for load in self.loads]

    def execute(self, profile: Path | None) -> RunResult:
        args, r = self.args, self.result
        share = -(-len(self.refs) // args.load_processes)
        for n in range(args.load_processes):
            part = self.refs[n * share : (n + 1) * share]
            if part:
                spec = LoadSpec(
                    "127.0.0.1",
                    0,
                    self.delta,
                    tuple((p.node_id, p.cluster) for p in part),
                    args.streams_per_connection,
                )
                self.loads.append(Child(f"load-{n}", mesh_client.run, spec))
        for load in self.loads:
            load.recv()
        extra = ["--cert-validity", args.cert_validity] if args.cert_validity else []
        controller = self.controller = Controller(
            self.mesh, self.workdir / "state", self.workdir / "serve.log", extra
        )
        self.profile = profile
        wait_for_port(controller.xds_port, controller, 120)
        r.idle_rss_mb = controller.status_mb("VmRSS")
        self._spy("cold")
        r.listen_s = time.monotonic() - controller.spawned
        # the port is known only now: the load processes get it with the command
        for load in self.loads:
            load.pipe.send(("connect_to", controller.xds_port))
        for load in self.loads:
            load.recv()
        self.ask_all("connect")
        self._cold()
        self._spy("")
        for name in args.changes:
            if name == "target" and self.shape.permissive:
                continue
            controller.check()
            self._spy(name)
            r.changes.append(self._renew() if name == "renew" else self._change(name))
            self._spy("")
        r.peak_rss_mb = controller.status_mb("VmHWM")
        r.total_cpu_s = controller.cpu()
        return r

    def _spy(self, phase: str) -> None:
        """Stop the phase being sampled; start sampling `phase` (with --py-spy, first run)."""
        if self.spy is not None:
            self.spy.stop()
            self.spy = None
        if phase and self.profile is not None and self.controller is not None:
            self.spy = Spy(
                self.controller.pid, self.profile / f"{self.result.mode}-{self.result.xds}-{phase}.txt"
            )

    def _cold(self) -> None:
        deadline = time.monotonic() + self.args.timeout
        total = len(self.refs)
        # /readyz is polled by a thread: the status round trips below wait for a busy load process
        done = threading.Event()
        poller = threading.Thread(target=self._poll_readyz, args=(done,), daemon=True)
        poller.start()
        try:
            status = self._wait_converged(deadline, total)
        finally:
            done.set()
            poller.join()
        self._cold_figures(status)

    def _poll_readyz(self, done: threading.Event) -> None:
        controller = self.controller
        assert controller is not None
        while not done.is_set() and controller.alive():
            if controller.get("/readyz", timeout=2)[0] == 200:
                self.result.readyz_s = time.monotonic() - controller.spawned
                return
            done.wait(0.05)

    def _wait_converged(self, deadline: float, total: int) -> list[dict[str, Any]]:
        args, controller = self.args, self.controller
        assert controller is not None
        last_print = 0.0
        while True:
            controller.check()
            status = self.ask_all("status")
            ready = sum(s["ready"] for s in status)
            failures = [m for s in status for m in s["failed"]]
            if failures:
                raise RuntimeError(f"proxy failures: {failures}")
            if ready == total:
                break
            now = time.monotonic()
            if now > deadline:
                missing = sum(s["missing"] for s in status)
                raise TimeoutError(
                    f"cold: {ready}/{total} converged after {args.timeout:.0f} s ({missing} names missing)"
                )
            if now - last_print > 10:
                last_print = now
                print(f"  cold: {ready}/{total} converged, {now - controller.spawned:.0f} s", file=sys.stderr)
            time.sleep(POLL * 4)
        return status

    def _cold_figures(self, status: list[dict[str, Any]]) -> None:
        r, controller = self.result, self.controller
        assert controller is not None
        times = [t for s in status for t in s["ready_times"]]
        r.cold_s = max(times) - controller.spawned
        r.cold_p50_s = statistics.median(times) - controller.spawned
        r.cold_cpu_s = controller.cpu()
        r.cold_rss_mb = controller.status_mb("VmRSS")
        r.cold_bytes = sum(s["bytes"] for s in status)
        r.client_cpu_s = sum(s["cpu"] for s in status)
        metrics = controller.metrics()
        self._metrics = metrics
        r.cold_encodes = metrics.get("meshcp_cache_encodes", 0.0)
        r.cold_resources_sent = sum(
            v for k, v in metrics.items() if k.startswith("meshcp_xds_resources_sent_total")
        )

    def _change(self, name: str) -> ChangeResult:
        args, controller, shape = self.args, self.controller, self.shape
        assert controller is not None
        result = ChangeResult(name)
        before = self._metrics
        armed = self.ask_all("arm")
        bytes0 = sum(a["bytes"] for a in armed)
        base = sum(s["responses"] for s in self.ask_all("status"))
        cpu0 = controller.cpu()
        service = min(1, shape.services - 1)
        started = time.monotonic()
        if name == "endpoint":
            mm.write_documents(
                self.mesh, mm.service_file(shape, service), mm.service_documents(shape, service, moved=0)
            )
        elif name == "target":
            newcomer = (service + shape.sources + 1) % shape.services
            doc = mm.traffic_target(shape, service, [newcomer], name=f"{mm.service(shape, service)}-extra")
            mm.write_documents(self.mesh, f"{mm.namespace(shape, service)}/extra-target.yaml", [doc])
        elif name == "split":
            apexes = mm.split_apexes(shape)
            if not apexes:
                result.note = "no TrafficSplit at this size"
                return result
            mm.write_documents(
                self.mesh, mm.split_file(shape, apexes[0]), [mm.traffic_split(shape, apexes[0], (90, 10))]
            )
        elif name == "rotate":
            subprocess.run(
                [sys.executable, "-m", "meshcp", "ca", "rotate", "--state-dir", str(controller.state)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        settle = args.settle * (3 if name == "rotate" else 1)
        deadline = started + args.timeout
        seen, quiet_since = -1, time.monotonic()
        while True:
            controller.check()
            time.sleep(POLL * 2)
            status = self.ask_all("status")
            responses = sum(s["responses"] for s in status)
            converged = all(s["converged"] == len(self._part(i)) for i, s in enumerate(status))
            now = time.monotonic()
            if responses != seen:
                seen, quiet_since = responses, now
            stable = name != "rotate" or self._ca_phase() == "stable"
            # every scenario pushes something: wait for it (a slow compile is not quiet), then
            # for --settle seconds without a response
            if responses > base and converged and stable and now - quiet_since >= settle:
                break
            if now > deadline:
                result.note = f"timeout after {args.timeout:.0f} s"
                break
        reports = self.ask_all("report")
        after = controller.metrics()
        self._metrics = after
        times = [t - started for rep in reports for t in rep["times"]]
        result.affected = len(times)
        result.p50_ms = 1000 * percentile(times, 0.5)
        result.p99_ms = 1000 * percentile(times, 0.99)
        result.max_ms = 1000 * max(times, default=0.0)
        result.responses = sum(rep["responses"] for rep in reports)
        result.pushed = {k: sum(rep["pushed"][k] for rep in reports) for k in mesh_client.SHORT}
        result.pushed = {k: v for k, v in result.pushed.items() if v}
        result.encodes = after.get("meshcp_cache_encodes", 0.0) - before.get("meshcp_cache_encodes", 0.0)
        result.resources_sent = metric_delta(before, after, "meshcp_xds_resources_sent_total")
        result.cpu_s = controller.cpu() - cpu0
        result.bytes_sent = sum(rep["bytes"] for rep in reports) - bytes0
        result.unconverged = sum(rep["unconverged"] for rep in reports)
        failures = [m for rep in reports for m in rep["failed"]]
        if failures:
            result.note += f" failures: {failures}"
        return result

    def _renew(self) -> ChangeResult:
        """One identity's timed renewal: its installed-timestamp gauge changes, then its
        proxies ACK an SDS response carrying its `service-cert:` secret."""
        args, controller, shape = self.args, self.controller, self.shape
        assert controller is not None
        result = ChangeResult("renew")
        if not args.cert_validity:
            result.note = "needs --cert-validity (e.g. 30s)"
            return result
        identity = next(p.cluster for p in self.refs if p.service == min(1, shape.services - 1))
        nodes = {p.node_id for p in self.refs if p.cluster == identity}
        key = f'{INSTALLED}{{identity="{identity}"}}'
        before = controller.metrics()
        old = before.get(key)
        armed = self.ask_all("arm", f"service-cert:{identity}")
        bytes0 = sum(a["bytes"] for a in armed)
        cpu0 = controller.cpu()
        deadline = time.monotonic() + args.timeout
        while True:  # the renewal: the gauge moves (the controller renews on its own timer)
            controller.check()
            after = controller.metrics()
            value = after.get(key)
            if value is not None and value != old:
                break
            if time.monotonic() > deadline:
                result.note = f"no renewal of {identity} within {args.timeout:.0f} s"
                return result
            time.sleep(POLL * 2)
        installed = value - (time.time() - time.monotonic())  # controller's Unix time -> our monotonic
        last, quiet_since = 0.0, time.monotonic()
        while True:  # every proxy of the identity ACKed it, then --settle quiet seconds
            controller.check()
            time.sleep(POLL * 2)
            status = self.ask_all("status")
            watched = [t for s in status for n, t in s["watched"].items() if n in nodes and t >= installed]
            now = time.monotonic()
            if max(watched, default=0.0) != last:
                last, quiet_since = max(watched, default=0.0), now
            if len(watched) == len(nodes) and now - quiet_since >= args.settle:
                break
            if now > deadline:
                result.note = f"timeout: {len(watched)}/{len(nodes)} proxies of {identity}"
                break
        reports = self.ask_all("report")
        after = controller.metrics()
        self._metrics = after
        times = [t - installed for rep in reports for n, t in rep["watched"].items() if n in nodes]
        times = [t for t in times if t >= 0]
        result.affected = len(times)
        result.p50_ms = 1000 * percentile(times, 0.5)
        result.p99_ms = 1000 * percentile(times, 0.99)
        result.max_ms = 1000 * max(times, default=0.0)
        result.responses = sum(rep["responses"] for rep in reports)
        result.pushed = {k: sum(rep["pushed"][k] for rep in reports) for k in mesh_client.SHORT}
        result.pushed = {k: v for k, v in result.pushed.items() if v}
        result.encodes = after.get("meshcp_cache_encodes", 0.0) - before.get("meshcp_cache_encodes", 0.0)
        result.resources_sent = metric_delta(before, after, "meshcp_xds_resources_sent_total")
        result.cpu_s = controller.cpu() - cpu0
        result.bytes_sent = sum(rep["bytes"] for rep in reports) - bytes0
        result.unconverged = sum(rep["unconverged"] for rep in reports)
        result.note = (result.note + f" identity {identity}, {len(nodes)} proxies; others renew too").strip()
        failures = [m for rep in reports for m in rep["failed"]]
        if failures:
            result.note += f" failures: {failures}"
        return result

    def _part(self, index: int) -> list[mm.ProxyRef]:
        share = -(-len(self.refs) // self.args.load_processes)
        return self.refs[index * share : (index + 1) * share]

    def _ca_phase(self) -> str:
        assert self.controller is not None
        index = self.controller.state / "ca-state.json"
        try:
            return str(json.loads(index.read_text()).get("phase", ""))
        except (OSError, ValueError):
            return ""


# --- reporting ---------------------------------------------------------------------------------


def median_run(runs: list[RunResult]) -> dict[str, Any]:
    """Per field, the median over runs (changes matched by name)."""

    def med(values: list[float]) -> float:
        return float(statistics.median(values)) if values else 0.0

    first = runs[0]
    out: dict[str, Any] = {
        k: med([getattr(r, k) for r in runs])
        for k in (
            "listen_s",
            "idle_rss_mb",
            "readyz_s",
            "cold_s",
            "cold_p50_s",
            "cold_cpu_s",
            "cold_rss_mb",
            "cold_bytes",
            "cold_encodes",
            "cold_resources_sent",
            "client_cpu_s",
            "peak_rss_mb",
            "total_cpu_s",
        )
    }
    out.update(mode=first.mode, xds=first.xds, services=first.services, proxies=first.proxies, runs=len(runs))
    changes = []
    for c in first.changes:
        same = [x for r in runs for x in r.changes if x.name == c.name]
        row: dict[str, Any] = {
            k: med([getattr(x, k) for x in same])
            for k in ("affected", "p50_ms", "p99_ms", "max_ms", "responses", "encodes", "cpu_s", "bytes_sent")
        }
        row["name"] = c.name
        row["pushed"] = c.pushed
        row["resources_sent"] = c.resources_sent
        row["unconverged"] = max(x.unconverged for x in same)
        row["note"] = "; ".join(sorted({x.note for x in same if x.note}))
        changes.append(row)
    out["changes"] = changes
    return out


def table(summary: dict[str, Any], debounce_ms: int) -> str:
    s = summary
    title = f"{s['mode']} / {s['xds']}: {s['services']:,} services, {s['proxies']:,} proxies"
    cold = [
        f"{s['listen_s']:.2f}",
        f"{s['readyz_s']:.2f}",
        f"{s['cold_s']:.2f} ({s['cold_p50_s']:.2f})",
        f"{s['cold_cpu_s']:.1f}",
        f"{s['cold_rss_mb']:.0f}",
        f"{s['cold_bytes'] / 1e6:.1f} MB",
        f"{s['cold_encodes']:,.0f}",
        f"{s['cold_resources_sent']:,.0f}",
        f"{s['client_cpu_s']:.1f}",
    ]
    lines = [
        f"### {title} (median of {s['runs']})",
        "",
        "| cold: listen s | /readyz s | all converged s (p50) | controller CPU s | RSS MB | bytes sent "
        "| encodes | resources sent | load-process CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(cold) + " |",
        "",
        f"| change | affected proxies | p50 ms | p99 ms | max ms | p99 beyond {debounce_ms} ms debounce "
        "| encodes | resources sent (metrics) | controller CPU s | bytes sent | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for c in s["changes"]:
        sent = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(c["resources_sent"].items())) or "-"
        cells = [
            c["name"],
            f"{c['affected']:,.0f}",
            f"{c['p50_ms']:.0f}",
            f"{c['p99_ms']:.0f}",
            f"{c['max_ms']:.0f}",
            f"{max(0.0, c['p99_ms'] - debounce_ms):.0f}",
            f"{c['encodes']:,.0f}",
            sent,
            f"{c['cpu_s']:.2f}",
            f"{c['bytes_sent'] / 1e3:,.0f} KB",
            c["note"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    per_proxy = 1024 * (s["cold_rss_mb"] - s["idle_rss_mb"]) / max(1, s["proxies"])
    lines += [
        "",
        f"Peak RSS (VmHWM) {s['peak_rss_mb']:.0f} MB; RSS when the port opened {s['idle_rss_mb']:.0f} MB, "
        f"so {per_proxy:.0f} KB per proxy after cold convergence (compiled config included); "
        f"controller CPU in all {s['total_cpu_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM behaves as Ctrl-C, so `finally` blocks stop the children."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        "--prune",
        action="store_true",
        help="MeshConfig pruneUnreachableUpstreams: each proxy gets only the services it may reach",
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
    mesh_client.self_check()
    snapshot = export_source(args.meshcp_rev) if args.meshcp_rev else None
    try:
        measure(args, modes, xds_modes)
    finally:
        if snapshot is not None:
            shutil.rmtree(snapshot, ignore_errors=True)


def export_source(rev: str) -> Path:
    """`git archive REV src` into a temporary directory, first on PYTHONPATH for every child."""
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix=f"meshcp-src-{commit}-"))
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", commit, "src"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(target / "src"), os.environ.get("PYTHONPATH")])
    )
    print(f"# meshcp from {rev} = {commit}", file=sys.stderr)
    return target


def measure(args: argparse.Namespace, modes: list[str], xds_modes: list[str]) -> None:
    print(f"# {machine()}; load average at start {load_average():.2f}", file=sys.stderr)
    started = time.monotonic()
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
                runs = []
                for n in range(args.runs):
                    workdir = Path(tempfile.mkdtemp(prefix="mesh-scale-"))
                    run = Run(args, shape, xds == "delta", workdir)
                    profile = None
                    if args.py_spy and n == 0:
                        profile = Path(args.py_spy)
                        profile.mkdir(parents=True, exist_ok=True)
                    try:
                        result = run.execute(profile)
                    finally:
                        run.close()
                        if not args.keep:
                            shutil.rmtree(workdir, ignore_errors=True)
                    runs.append(result)
                    every.append(asdict(result))
                    print(
                        f"  {mode}/{xds} run {n + 1}: cold {result.cold_s:.2f} s, "
                        + ", ".join(f"{c.name} p99 {c.p99_ms:.0f} ms ({c.affected})" for c in result.changes)
                        + f", peak RSS {result.peak_rss_mb:.0f} MB",
                        file=sys.stderr,
                    )
                summary = median_run(runs)
                summaries.append(summary)
                print(table(summary, shape.debounce_ms), flush=True)
    print(
        f"# load average at end {load_average():.2f}; total {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": every, "medians": summaries}, indent=1))


if __name__ == "__main__":
    main()
