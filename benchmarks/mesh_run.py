"""One mesh scale run: a fresh mesh directory, CA state and controller; the load
processes' proxies; cold convergence, then each change in turn (see `mesh_scale.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mesh_client
import mesh_manifests as mm
from bench_support import percentile
from control_pipe import Child
from controller_process import Controller, metric_delta
from mesh_changes import changed_service, make_change
from mesh_client import LoadSpec
from mesh_resources import SHORT
from py_spy import PySpy

POLL = 0.05
INSTALLED = "meshcp_workload_certificate_installed_timestamp_seconds"


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
    #: The controller's own count: CPU its reconcile rounds took (before any push), and
    #: the rounds, by scope (`meshcp_reconcile_compiles_total`).
    round_cpu_ms: float = 0.0
    rounds: dict[str, float] = field(default_factory=dict)
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
        self.spy: PySpy | None = None
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
            load.send(*command)
        return [load.recv(timeout) for load in self.loads]

    def execute(self, profile: Path | None) -> RunResult:
        args, r = self.args, self.result
        for n in range(args.load_processes):
            part = self._part(n)
            if part:
                spec = LoadSpec(
                    "127.0.0.1",
                    0,
                    self.delta,
                    tuple((p.node_id, p.cluster) for p in part),
                    args.streams_per_connection,
                )
                self.loads.append(Child(f"load-{n}", mesh_client.run, spec, timeout=120.0))
        for load in self.loads:
            load.recv()
        extra = ["--cert-validity", args.cert_validity] if args.cert_validity else []
        # other benchmarks built on this run (page_load.py) add serve options and a load
        # that runs while the changes are measured
        extra += getattr(args, "controller_args", [])
        controller = self.controller = Controller(
            self.mesh, self.workdir / "state", self.workdir / "serve.log", extra
        )
        self.profile = profile
        controller.wait_for_xds(120)
        r.idle_rss_mb = controller.status_mb("VmRSS")
        self._spy("cold")
        r.listen_s = time.monotonic() - controller.spawned
        # the port is known only now: the load processes get it with the command
        self.ask_all("connect_to", controller.xds_port)
        self.ask_all("connect")
        self._cold()
        self._spy("")
        during = getattr(args, "during_changes", None)
        with during(controller) if during is not None else contextlib.nullcontext():
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
            output = self.profile / f"{self.result.mode}-{self.result.xds}-{phase}.txt"
            self.spy = PySpy(self.controller.pid, output, label="controller", rate=100, gil=True)

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
        r.cold_encodes = metrics.get("meshcp_cache_encodes_total", 0.0)
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
        started = time.monotonic()
        result.note = make_change(name, shape, self.mesh, controller.state)
        if result.note:
            return result
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

        def latencies(reports: list[dict[str, Any]]) -> list[float]:
            return [t - started for rep in reports for t in rep["times"]]

        return self._figures(result, before, cpu0, bytes0, latencies)

    def _renew(self) -> ChangeResult:
        """One identity's timed renewal: its installed-timestamp gauge changes, then its
        proxies ACK an SDS response carrying `service-cert` (every proxy's name for its
        own certificate: only that identity's proxies are timed)."""
        args, controller, shape = self.args, self.controller, self.shape
        assert controller is not None
        result = ChangeResult("renew")
        if not args.cert_validity:
            result.note = "needs --cert-validity (e.g. 30s)"
            return result
        identity = next(p.cluster for p in self.refs if p.service == changed_service(shape))
        nodes = {p.node_id for p in self.refs if p.cluster == identity}
        key = f'{INSTALLED}{{identity="{identity}"}}'
        before = controller.metrics()
        old = before.get(key)
        armed = self.ask_all("arm", "service-cert")
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

        def latencies(reports: list[dict[str, Any]]) -> list[float]:
            times = [t - installed for rep in reports for n, t in rep["watched"].items() if n in nodes]
            return [t for t in times if t >= 0]

        note = f" identity {identity}, {len(nodes)} proxies; others renew too"
        return self._figures(result, before, cpu0, bytes0, latencies, note)

    def _figures(
        self,
        result: ChangeResult,
        before: dict[str, float],
        cpu0: float,
        bytes0: int,
        latencies: Callable[[list[dict[str, Any]]], list[float]],
        note: str = "",
    ) -> ChangeResult:
        """A change's figures from the load processes' reports (`latencies` picks the
        times that count) and the controller's /metrics and CPU since `before`."""
        controller = self.controller
        assert controller is not None
        reports = self.ask_all("report")
        after = controller.metrics()
        self._metrics = after
        times = latencies(reports)
        result.affected = len(times)
        result.p50_ms = 1000 * percentile(times, 0.5)
        result.p99_ms = 1000 * percentile(times, 0.99)
        result.max_ms = 1000 * max(times, default=0.0)
        result.responses = sum(rep["responses"] for rep in reports)
        pushed = {k: sum(rep["pushed"][k] for rep in reports) for k in SHORT}
        result.pushed = {k: v for k, v in pushed.items() if v}
        result.encodes = after.get("meshcp_cache_encodes_total", 0.0) - before.get(
            "meshcp_cache_encodes_total", 0.0
        )
        result.resources_sent = metric_delta(before, after, "meshcp_xds_resources_sent_total")
        result.cpu_s = controller.cpu() - cpu0
        result.round_cpu_ms = 1000 * (
            after.get("meshcp_reconcile_round_cpu_seconds_total", 0.0)
            - before.get("meshcp_reconcile_round_cpu_seconds_total", 0.0)
        )
        result.rounds = metric_delta(before, after, "meshcp_reconcile_compiles_total")
        result.bytes_sent = sum(rep["bytes"] for rep in reports) - bytes0
        result.unconverged = sum(rep["unconverged"] for rep in reports)
        if note:
            result.note = (result.note + note).strip()
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
