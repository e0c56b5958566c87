"""SMI compile at scale: `Reconciler.apply` on a synthetic mesh built as model objects.

    python benchmarks/compile_scale.py                      # 1,000 services, both modes, 3 runs
    python benchmarks/compile_scale.py --services 100 --namespaces 10 --splits 10  # the old default

The mesh: `--namespaces` meshed namespaces holding `--services` services in all, each with
its own service account, one HTTP port and `--pods` pods (and an EndpointSlice naming them,
as the endpoint controller writes it). In `smi` mode every service has a TrafficTarget
allowing `--sources` client identities (services elsewhere in the mesh) the two matches of
its namespace's HTTPRouteGroup; `--splits` apexes (one per namespace, the first ones) split
50/50 over two other services of their namespace. `permissive` mode is the same mesh with
MeshConfig permissive=True and no TrafficTargets.

Per mode and run, everything is rebuilt (objects, CA, encoder, publisher, reconciler):

- full compile: `Reconciler.apply(state)` on an empty reconciler: wall time, CPU time, peak
  RSS growth during the call (VmHWM, reset through /proc/self/clear_refs) and the growth
  still held after it (the compiled mesh), classes, resources (distinct encoded ones, and
  references over all classes) and encodes (template fills included);
- then, on the same reconciler, three changes in turn: one pod IP (pod and its slice), one
  TrafficTarget source added (smi only), one TrafficSplit weight (50/50 to 90/10): time,
  `Encoder.encodes` delta and the resources that are new objects, by type;
- baseline, per change (first run only: each is a full compile): the naive approach,
  `Reconciler.forget()` (every compiled piece dropped) and the same changed state again.

Publishing is not measured: no certificate is issued in the run, so the publisher only
queues the classes (building the per-class snapshots is the cache's cost, not the
compiler's).

tracemalloc slows the compile several times, so its peak comes from a separate pass
(`--tracemalloc`, first run only) and is not mixed into the timings.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshcp.cache import Encoder, SnapshotCache, resource_types
from meshcp.certs import InternalCA, Issuer, MemoryStore, workload_certificates
from meshcp.model.core import EndpointSlice, Namespace, Pod, Service, ServicePort, SliceEndpoint, SlicePort
from meshcp.model.meshconfig import MESH_LABEL, MeshConfig
from meshcp.model.meta import Meta, frozen_map
from meshcp.model.smi import (
    HTTPMatch,
    HTTPRouteGroup,
    IdentitySubject,
    SplitBackend,
    TargetRule,
    TrafficSplit,
    TrafficTarget,
)
from meshcp.model.state import MeshObject, MeshState
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.publish import Publisher
from meshcp.runtime.reconcile import Reconciler

PORT = 8080
ROUTES = "routes"
MATCHES = (HTTPMatch("read", "/api/", ("GET",)), HTTPMatch("write", "/api/", ("POST", "PUT")))
HWM_RESET = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Scale:
    services: int
    namespaces: int
    pods: int
    sources: int
    splits: int


def _ns(scale: Scale, index: int) -> str:
    return f"ns-{index % scale.namespaces:03d}"


def _svc(scale: Scale, index: int) -> str:
    return f"svc-{index // scale.namespaces:04d}"


def _pod_ip(index: int, replica: int, generation: int = 0) -> str:
    n = index * 8 + replica
    return f"10.{128 + generation}.{n // 256}.{n % 256}"


def _pod(scale: Scale, index: int, replica: int, generation: int = 0) -> Pod:
    ns, svc = _ns(scale, index), _svc(scale, index)
    labels = frozen_map({"app": svc})
    return Pod(Meta(f"{svc}-{replica}", ns, labels=labels), svc, _pod_ip(index, replica, generation), True)


def _slice(scale: Scale, index: int, pods: list[Pod]) -> EndpointSlice:
    ns, svc = _ns(scale, index), _svc(scale, index)
    endpoints = tuple(SliceEndpoint((p.ip,), True, p.meta.name) for p in pods)
    return EndpointSlice(Meta(f"{svc}-abcde", ns), svc, endpoints, (SlicePort(PORT, "http"),))


def _target(scale: Scale, index: int, sources: int) -> TrafficTarget:
    ns, svc = _ns(scale, index), _svc(scale, index)
    subjects = tuple(
        IdentitySubject(_svc(scale, src), _ns(scale, src))
        for src in ((index + k) % scale.services for k in range(1, sources + 1))
    )
    rule = TargetRule("HTTPRouteGroup", ROUTES, tuple(m.name for m in MATCHES))
    return TrafficTarget(Meta(svc, ns), IdentitySubject(svc, ns), subjects, (rule,))


def _split(scale: Scale, apex: int, weights: tuple[float, float]) -> TrafficSplit:
    """Apex `apex` (< namespaces: the first service of a namespace) to the next two services."""
    ns = _ns(scale, apex)
    backends = tuple(
        SplitBackend(_svc(scale, apex + scale.namespaces * (k + 1)), w) for k, w in enumerate(weights)
    )
    return TrafficSplit(Meta(f"split-{_svc(scale, apex)}", ns), _svc(scale, apex), backends)


def mesh(scale: Scale, permissive: bool) -> list[MeshObject]:
    objects: list[MeshObject] = [MeshConfig(permissive=permissive)]
    for n in range(scale.namespaces):
        name = f"ns-{n:03d}"
        objects.append(Namespace(Meta(name, labels=frozen_map({MESH_LABEL: "meshcp"}))))
        objects.append(HTTPRouteGroup(Meta(ROUTES, name), MATCHES))
    for i in range(scale.services):
        ns, svc = _ns(scale, i), _svc(scale, i)
        port = ServicePort(PORT, PORT, "http", "http")
        cluster_ip = f"10.96.{i // 256}.{i % 256}"
        objects.append(Service(Meta(svc, ns), (port,), frozen_map({"app": svc}), cluster_ip))
        pods = [_pod(scale, i, r) for r in range(scale.pods)]
        objects += pods
        objects.append(_slice(scale, i, pods))
        if not permissive:
            objects.append(_target(scale, i, scale.sources))
    objects += [_split(scale, a, (50.0, 50.0)) for a in range(min(scale.splits, scale.namespaces))]
    return objects


# --- measuring --------------------------------------------------------------------------------


def _reset_hwm() -> bool:
    try:
        HWM_RESET.write_text("5")
    except OSError:
        return False
    return True


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Step:
    seconds: float
    cpu: float
    encodes: int
    changed: Counter[str] = field(default_factory=Counter)
    classes: int = 0
    resources: int = 0
    references: int = 0
    peak_rss_mb: float = 0.0
    held_rss_mb: float = 0.0


def _measure(
    rec: Reconciler, publisher: Publisher, encoder: Encoder, state: MeshState, before: list[ProxyClass]
) -> tuple[Step, list[ProxyClass]]:
    # every resource of a class lives in `resources` or its shared `sets` (all_resources):
    # counting `resources` alone reported 0 since the shared-set change
    seen = {id(r) for c in before for r in c.all_resources()}
    gc.collect()
    count = encoder.encodes
    rss0 = _status_kb("VmRSS")
    hwm = _reset_hwm()
    cpu0, t0 = time.process_time(), time.perf_counter()
    classes = rec.apply(state)
    publisher.update(classes)  # as a controller round does (it only queues: no certificates)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = (_status_kb("VmHWM") - rss0) / 1024 if hwm else 0.0
    held = (_status_kb("VmRSS") - rss0) / 1024
    distinct = {id(r): r for c in classes for r in c.all_resources()}
    changed = Counter(
        resource_types.SHORT_NAMES[r.type_url] for key, r in distinct.items() if key not in seen
    )
    step = Step(seconds, cpu, encoder.encodes - count, changed, len(classes))
    step.resources = len(distinct)
    step.references = sum(len(c.all_resources()) for c in classes)
    step.peak_rss_mb = peak
    step.held_rss_mb = held
    return step, classes


async def _reconciler() -> tuple[Reconciler, Publisher, Encoder]:
    encoder = Encoder()
    ca = await InternalCA.open(MemoryStore())
    publisher = Publisher(SnapshotCache(), encoder, workload_certificates(Issuer(ca)))
    return Reconciler(encoder), publisher, encoder


def _changes(scale: Scale, permissive: bool) -> list[tuple[str, Callable[[MeshState], MeshState]]]:
    index = scale.services // 2  # a service in the middle, not an apex nor a backend
    out: list[tuple[str, Callable[[MeshState], MeshState]]] = []

    def endpoint(state: MeshState) -> MeshState:
        pods = [_pod(scale, index, r, generation=1 if r == 0 else 0) for r in range(scale.pods)]
        return state.with_changes([pods[0], _slice(scale, index, pods)])

    out.append(("endpoint (pod IP)", endpoint))
    if not permissive:
        out.append(
            ("TrafficTarget +source", lambda s: s.with_changes([_target(scale, index, scale.sources + 1)]))
        )
    if scale.splits:
        out.append(("TrafficSplit weight", lambda s: s.with_changes([_split(scale, 0, (90.0, 10.0))])))
    return out


@dataclass
class Run:
    full: Step
    changes: dict[str, Step]
    naive: dict[str, Step]
    build_s: float
    trace_peak_mb: float = 0.0


async def one_run(scale: Scale, permissive: bool, naive: bool) -> Run:
    t0 = time.perf_counter()
    state = MeshState().with_changes(mesh(scale, permissive))
    build_s = time.perf_counter() - t0
    rec, publisher, encoder = await _reconciler()
    full, classes = _measure(rec, publisher, encoder, state, [])
    changes: dict[str, Step] = {}
    naive_steps: dict[str, Step] = {}
    for name, change in _changes(scale, permissive):
        state = change(state)
        changes[name], classes = _measure(rec, publisher, encoder, state, classes)
        if naive:
            rec.forget()  # the baseline: forget every compiled piece, recompile all
            naive_steps[name], classes = _measure(rec, publisher, encoder, state, classes)
    return Run(full, changes, naive_steps, build_s)


async def trace_peak(scale: Scale, permissive: bool) -> float:
    state = MeshState().with_changes(mesh(scale, permissive))
    rec, _, _ = await _reconciler()
    gc.collect()
    tracemalloc.start()
    rec.apply(state)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


# --- reporting --------------------------------------------------------------------------------


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _types(counter: Counter[str]) -> str:
    return " ".join(f"{name}:{n}" for name, n in sorted(counter.items())) or "-"


def report(mode: str, runs: list[Run]) -> None:
    full = [r.full for r in runs]
    trace = max(r.trace_peak_mb for r in runs)
    print(
        f"\n## {mode}: full compile (median of {len(runs)}; mesh objects built in "
        f"{_med([r.build_s for r in runs]):.2f} s)"
    )
    print(
        "| wall s | CPU s | peak RSS MB | held RSS MB | tracemalloc peak MB | classes "
        "| resources (refs) | encodes |"
    )
    print(
        "|-------:|------:|------------:|------------:|--------------------:|--------:"
        "|-----------------:|--------:|"
    )
    traced = f"{trace:.0f}" if trace else "-"
    print(
        f"| {_med([s.seconds for s in full]):.2f} | {_med([s.cpu for s in full]):.2f} "
        f"| {_med([s.peak_rss_mb for s in full]):.0f} | {_med([s.held_rss_mb for s in full]):.0f} "
        f"| {traced} | {full[0].classes:,} "
        f"| {full[0].resources:,} ({full[0].references:,}) | {int(_med([s.encodes for s in full])):,} |"
    )
    print(f"\n## {mode}: one change on the same reconciler (median of {len(runs)})")
    print(
        "| change | incremental ms | encodes | changed resources | naive full ms | naive encodes | speed-up |"
    )
    print(
        "|--------|---------------:|--------:|-------------------|--------------:|--------------:|---------:|"
    )
    for name in runs[0].changes:
        inc = [r.changes[name] for r in runs]
        ms = _med([s.seconds for s in inc]) * 1000
        enc = int(_med([s.encodes for s in inc]))
        naive = [r.naive[name] for r in runs if name in r.naive]
        if naive:
            nms = _med([s.seconds for s in naive]) * 1000
            nenc = f"{int(_med([s.encodes for s in naive])):,}"
            ratio = f"{nms / ms:.1f}x"
        else:
            nms, nenc, ratio = float("nan"), "-", "-"
        print(f"| {name} | {ms:.1f} | {enc:,} | {_types(inc[0].changed)} | {nms:.0f} | {nenc} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--pods", type=int, default=5, help="pods per service")
    parser.add_argument("--sources", type=int, default=5, help="client identities per TrafficTarget")
    parser.add_argument(
        "--splits", type=int, default=50, help="TrafficSplit apexes (at most one per namespace)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=("smi", "permissive", "both"), default="both")
    parser.add_argument("--no-naive", action="store_true", help="skip the full-recompile baseline")
    parser.add_argument("--tracemalloc", action="store_true", help="extra traced pass for the peak")
    args = parser.parse_args()
    if args.services < 3 * args.namespaces:
        parser.error("need at least 3 services per namespace (apex and two split backends)")
    scale = Scale(args.services, args.namespaces, args.pods, args.sources, args.splits)
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {scale}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    modes = ["smi", "permissive"] if args.mode == "both" else [args.mode]
    total = time.perf_counter()
    for mode in modes:
        permissive = mode == "permissive"
        runs = []
        for run in range(args.runs):
            naive = run == 0 and not args.no_naive  # a full compile per change: the first run only
            runs.append(asyncio.run(one_run(scale, permissive, naive)))
            gc.collect()
        if args.tracemalloc:
            runs[0].trace_peak_mb = asyncio.run(trace_peak(scale, permissive))
        report(mode, runs)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\ntotal {time.perf_counter() - total:.0f} s, max RSS {maxrss:.0f} MB, load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
