"""The file source on one big multi-document file: one pod's IP edited, old and new code side by side.

    flock /tmp/meshcp-bench.lock python benchmarks/file_source_change.py --baseline main

(`--layout per-service` runs the same edits on `mesh_manifests`' own layout, a file per
service, and `both`, the default, runs both layouts.)

Many users keep a whole mesh in one file (`kubectl apply -f mesh.yaml`). The mesh of
`mesh_manifests` (S services x P pods, SMI mode: MeshConfig, namespaces, route groups,
per service an account, a Service, its pods and a TrafficTarget, the splits) is written as
ONE multi-document YAML file. Each variant runs `FileSource` alone in its own process
(`--baseline REV`: that commit's `src`, exported with `git archive` as
`controller_process.meshcp_source` does; the other: this tree's `src`), alternating
variants run after run, and measures:

- cold: from `run()` to `Synced` (wall, and the process's CPU over all its threads);
- per edit (`--edits` per run, each a different pod's `podIP` in the file): from the atomic
  replace of the file (the new text is written beside the tree beforehand) to the `Upsert`
  of that pod: wall time (the watcher's own debounce included, the same for both) and the
  process's CPU; and the longest the event loop went without running a 2 ms heartbeat
  while the edit was handled (a stall every xDS stream of the controller would feel).

Figures are medians over every edit of every run of a variant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_support
import mesh_manifests as mm
import yaml
from controller_process import meshcp_source

import meshcp
from meshcp.model.meta import ObjectRef
from meshcp.sources.events import Event, Synced, Upsert
from meshcp.sources.files import FileSource

HERE = Path(__file__).resolve().parent
TREE_SRC = HERE.parent / "src"
MESH_FILE = "mesh.yaml"
#: The whole mesh in one file, or `mesh_manifests`' own layout (a file per service).
LAYOUTS = ("one-file", "per-service")
HEARTBEAT = 0.002


def mesh_documents(shape: mm.Shape) -> list[dict[str, Any]]:
    """Every object `mm.write_mesh` writes, in one list (the order of its files)."""
    documents: list[dict[str, Any]] = [mm.mesh_config(shape)]
    documents += [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": f"ns-{n:03d}", "labels": {mm.MESH_LABEL: "meshcp"}},
        }
        for n in range(shape.namespaces)
    ]
    if not shape.permissive:
        documents += [mm.route_group(f"ns-{n:03d}") for n in range(shape.namespaces)]
    for index in range(shape.services):
        documents += mm.service_documents(shape, index)
    documents += [mm.traffic_split(shape, apex, (50, 50)) for apex in mm.split_apexes(shape)]
    return documents


def edited_pods(shape: mm.Shape, count: int) -> list[tuple[int, int]]:
    """(service, replica) of the pods to move, spread over the file."""
    return [((7 + k * 389) % shape.services, k % shape.pods) for k in range(count)]


# --- the measured process -------------------------------------------------------------------


def holder(shape: mm.Shape, layout: str, service: int) -> str:
    """The file that holds a service's pods."""
    return MESH_FILE if layout == "one-file" else mm.service_file(shape, service)


async def measure(directory: Path, shape: mm.Shape, layout: str, edits: int) -> dict[str, Any]:
    events: asyncio.Queue[Event] = asyncio.Queue()
    stall = 0.0
    ticked = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal stall
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(HEARTBEAT)
            stall = max(stall, loop.time() - before - HEARTBEAT)
            ticked.set()

    async def until(done: Any) -> None:
        while not done(await events.get()):
            pass

    staging = directory.parent / ".staging.yaml"
    beating = asyncio.create_task(heartbeat())
    source = FileSource(directory, events.put_nowait)
    wall, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(source.run())
    await until(lambda event: isinstance(event, Synced))
    result: dict[str, Any] = {
        "cold_wall": time.perf_counter() - wall,
        "cold_cpu": time.process_time() - cpu,
        "wall": [],
        "cpu": [],
        "stall": [],
    }
    for service, replica in edited_pods(shape, edits):
        old_ip = mm.pod_ip(shape, service, replica)
        new_ip = mm.pod_ip(shape, service, replica, generation=1)
        path = directory / holder(shape, layout, service)
        text = path.read_text().replace(f"podIP: {old_ip}\n", f"podIP: {new_ip}\n", 1)
        staging.write_text(text)
        ref = ObjectRef("Pod", mm.namespace(shape, service), mm.pod_name(shape, service, replica))
        await asyncio.sleep(0.3)  # let the heartbeat settle (not a synchronisation: nothing is pending)
        stall = 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        os.replace(staging, path)
        await until(lambda event, ref=ref: isinstance(event, Upsert) and event.obj.ref == ref)
        result["wall"].append(time.perf_counter() - wall)
        result["cpu"].append(time.process_time() - cpu)
        ticked.clear()
        await ticked.wait()  # the heartbeat held up by the edit, if any, has counted it
        result["stall"].append(stall)
    for running in (task, beating):
        running.cancel()
    await asyncio.gather(task, beating, return_exceptions=True)
    return result


def child(arguments: argparse.Namespace) -> None:
    shape = _shape(arguments)
    result = asyncio.run(measure(Path(arguments.child), shape, arguments.layout, arguments.edits))
    result["meshcp"] = meshcp.__file__
    print(json.dumps(result))


# --- the driver -----------------------------------------------------------------------------


def _shape(arguments: argparse.Namespace) -> mm.Shape:
    namespaces = arguments.namespaces or max(1, arguments.services // 10)
    return mm.Shape(arguments.services, namespaces, arguments.pods, sources=5, permissive=False)


def write_tree(tree: Path, shape: mm.Shape, layout: str) -> str:
    """The mesh under `tree` (made afresh); what it is, for the report."""
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    if layout == "per-service":
        objects = mm.write_mesh(tree, shape)
        files = sum(1 for _ in tree.rglob("*.yaml"))
        return f"{objects:,} objects in {files:,} files (one per service)"
    text = yaml.safe_dump_all(mesh_documents(shape), sort_keys=False)
    (tree / MESH_FILE).write_text(text)
    return f"{text.count(chr(10) + '---') + 1:,} documents in one file of {len(text) / 1e6:.1f} MB"


def run_variant(
    environment: dict[str, str], directory: Path, layout: str, arguments: argparse.Namespace
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(directory), "--layout", layout]
    command += ["--services", str(arguments.services), "--pods", str(arguments.pods)]
    command += ["--namespaces", str(arguments.namespaces), "--edits", str(arguments.edits)]
    done = subprocess.run(command, env=environment, check=True, capture_output=True, text=True, timeout=900)
    return dict(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5)
    parser.add_argument("--namespaces", type=int, default=0, help="default: services / 10")
    parser.add_argument("--layout", choices=[*LAYOUTS, "both"], default="both")
    parser.add_argument("--edits", type=int, default=5, help="pod IP edits per run")
    parser.add_argument("--runs", type=int, default=3, help="processes per variant and layout")
    parser.add_argument("--baseline", default="main", help="the commit to compare with")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments)
        return

    shape = _shape(arguments)
    layouts = LAYOUTS if arguments.layout == "both" else (arguments.layout,)
    tree = Path(tempfile.mkdtemp(prefix="meshcp-file-source-")) / "mesh"
    print(f"# {bench_support.machine()}; load {bench_support.load_average():.1f}", file=sys.stderr)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    described: dict[str, str] = {}
    try:
        with meshcp_source(arguments.baseline):
            before_env = dict(os.environ)
            before_env["PYTHONPATH"] = os.pathsep.join([before_env["PYTHONPATH"], str(HERE)])
            after_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TREE_SRC), str(HERE)]))
            for layout in layouts:
                results[layout] = {"before": [], "after": []}
                for run in range(arguments.runs):
                    for name, environment in (("before", before_env), ("after", after_env)):
                        described[layout] = write_tree(tree, shape, layout)  # every run from the same tree
                        result = run_variant(environment, tree, layout, arguments)
                        results[layout][name].append(result)
                        print(
                            f"# {layout} run {run + 1} {name} ({result['meshcp']}): "
                            f"cold {result['cold_wall']:.2f} s, "
                            f"edits wall {[round(w * 1000) for w in result['wall']]} ms, "
                            f"cpu {[round(c * 1000) for c in result['cpu']]} ms",
                            file=sys.stderr,
                        )
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)
    print(f"# load after: {bench_support.load_average():.1f}", file=sys.stderr)
    for layout in layouts:
        report(results[layout], f"{shape.services:,} services x {shape.pods} pods: {described[layout]}")


def report(results: dict[str, list[dict[str, Any]]], title: str) -> None:
    def median(name: str, key: str) -> float:
        values: list[float] = []
        for result in results[name]:
            value = result[key]
            values.extend(value if isinstance(value, list) else [value])
        return statistics.median(values)

    rows = [
        ("edit -> Upsert, wall", "wall", 1000, "ms"),
        ("edit -> Upsert, CPU", "cpu", 1000, "ms"),
        ("longest event-loop stall during the edit", "stall", 1000, "ms"),
        ("cold read -> Synced, wall", "cold_wall", 1, "s"),
        ("cold read -> Synced, CPU", "cold_cpu", 1, "s"),
    ]
    print(f"\n{title}\n")
    print("| median | before | after | before / after |")
    print("|---|---:|---:|---:|")
    for label, key, scale, unit in rows:
        before, after = median("before", key), median("after", key)
        ratio = f"{before / after:.1f}x" if after > 0 else "-"
        digits = 0 if unit == "ms" else 2
        cells = [f"{value * scale:,.{digits}f} {unit}" for value in (before, after)]
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()
