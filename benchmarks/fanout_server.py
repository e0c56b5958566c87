"""The server process of the fan-out benchmark: meshcp's xDS stack and its control loop.

The xDS stack is what `ControllerRuntime` builds around the cache (SnapshotCache,
AggregatedDiscoveryService, XdsServer with the raised stream limit, Metrics), without the
CA, the sources and the HTTP endpoint, which take no part in a push. Plaintext, as with
`--insecure-xds`.

The orchestrator drives it through a pipe. ACKs are counted where the server counts them
(the `meshcp_xds_acks` counter, instrumented to note the moment a target is reached), so
"ACKed by all" means the server processed the last ACK, not that a client sent it; and it
means every *distinct* connected stream holds the current content (the server's own
per-stream state, `ConnectedProxies.lagging`), not that N ACKs arrived. Encodes per
change are the server's `meshcp_cache_encodes_total`, read from its /metrics exposition.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import os
import pstats
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from control_pipe import CommandLoop, run_child
from fanout_workload import Workload
from prometheus_client import Counter

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp.cache import Encoder, SnapshotCache, resource_types
from meshcp.telemetry.metrics import Metrics
from meshcp.telemetry.readiness import Readiness
from meshcp.xds.registry import ConnectedProxies
from meshcp.xds.server import XdsServer
from meshcp.xds.service import AggregatedDiscoveryService

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def by_cluster(node: Node, identity: str | None) -> str:
    """Classifier: the load generator puts the proxy class in `node.cluster`."""
    return node.cluster


class AckTally:
    """ACKs counted by type, with waiters for a count to be reached."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0
        self._waiters: list[tuple[str | None, int, asyncio.Future[float]]] = []

    def add(self, short: str) -> None:
        self.counts[short] = self.counts.get(short, 0) + 1
        self.total += 1
        if self._waiters:
            now = time.monotonic()
            for waiter in [w for w in self._waiters if self._count(w[0]) >= w[1]]:
                self._waiters.remove(waiter)
                if not waiter[2].done():
                    waiter[2].set_result(now)

    def _count(self, short: str | None) -> int:
        return self.total if short is None else self.counts.get(short, 0)

    def count(self, short: str | None = None) -> int:
        return self._count(short)

    async def reached(self, short: str | None, target: int) -> float:
        """`time.monotonic()` of the ACK that made the count reach `target`."""
        if self._count(short) >= target:
            return time.monotonic()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append((short, target, future))
        return await future


def count_acks(metrics: Metrics) -> AckTally:
    """Replace `metrics.acks` by an identical counter that also feeds a tally."""
    tally = AckTally()

    class _Counted(Counter):
        def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
            super().inc(amount, exemplar)
            tally.add(self._labelvalues[0])

    metrics.registry.unregister(metrics.acks)
    metrics.acks = _Counted(
        "meshcp_xds_acks", "Responses ACKed by proxies, by type.", ["type"], registry=metrics.registry
    )
    return tally


def traced_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, clients: int) -> str:
    """Bytes allocated per client between two snapshots, by file and by line of the
    allocation (innermost frame), and by traceback, largest first."""
    lines = []
    for key, count in (("filename", 25), ("lineno", 40), ("traceback", 25)):
        stats = after.compare_to(before, key)
        total = sum(stat.size_diff for stat in stats)
        lines.append(f"tracemalloc by {key}: {total / clients:,.0f} B/client in all")
        for stat in stats[:count]:
            frames = list(stat.traceback)
            where = " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in reversed(frames))
            lines.append(
                f"  {stat.size_diff / clients:8.1f} B/client {stat.count_diff / clients:6.2f} obj  {where}"
            )
    return "\n".join(lines) + "\n"


def _short(filename: str) -> str:
    """`package/module.py`: enough to tell grpclib's server.py from h2's stream.py and ours."""
    return "/".join(filename.rsplit("/", 2)[-2:])


@dataclass(frozen=True)
class ServerSpec:
    resources: int
    classes: int
    profile: str  # directory for cProfile output of this run, or ""
    tracemalloc: int = 0  # frames per traceback: trace where the per-stream bytes go (0: off)


def run(control: Connection, spec: ServerSpec) -> None:
    """Entry point of the server process."""
    run_child(lambda: _ServerProcess(control, spec).main())


class _ServerProcess(CommandLoop):
    def __init__(self, control: Connection, spec: ServerSpec) -> None:
        super().__init__(control)
        self._spec = spec
        self._encoder = Encoder()
        self._workload = Workload(spec.resources, spec.classes, self._encoder)
        self._cache = SnapshotCache()
        self._metrics = Metrics()
        self._proxies = ConnectedProxies()
        self._tally = count_acks(self._metrics)
        # encodes are read from the server's own counter, as the controller exports it
        self._metrics.count_encodes(lambda: self._encoder.encodes)
        service = AggregatedDiscoveryService(
            self._cache, Readiness(), self._metrics, self._proxies, classify=by_cluster
        )
        self._xds = XdsServer(service)
        self._profiler: cProfile.Profile | None = None
        self._traced: tracemalloc.Snapshot | None = None

    async def main(self) -> None:
        workload = self._workload
        naive = workload.naive_rebuild()
        build = workload.build()
        for key, snapshot in build.snapshots.items():
            self._cache.set_snapshot(key, snapshot)
        await self._xds.start("127.0.0.1", 0)
        self.listen()
        gc.collect()
        if self._spec.tracemalloc:
            tracemalloc.start(self._spec.tracemalloc)
            self._traced = tracemalloc.take_snapshot()
        self._control.send(
            {
                "port": self._xds.port,
                "rss": rss(),
                "resources": workload.total(),
                "naive_encodes": naive.encodes,
                "naive_seconds": naive.seconds,
            }
        )
        await self._stop.wait()
        # Exit without the graceful teardown of every stream (slow at many streams, and not
        # what is measured): the figures are in, the kernel closes the sockets.
        self._control.send({"stopped": True})
        self._control.close()
        os._exit(0)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"initial": self._initial, "change": self._change}

    def _profile(self, on: bool) -> None:
        if not self._spec.profile:
            return
        if on:
            self._profiler = cProfile.Profile()
            self._profiler.enable()
        elif self._profiler is not None:
            self._profiler.disable()

    def _dump(self, name: str) -> str:
        if self._profiler is None:
            return ""
        path = os.path.join(self._spec.profile, f"{name}.pstats")
        self._profiler.dump_stats(path)
        text = io.StringIO()
        pstats.Stats(self._profiler, stream=text).sort_stats("tottime").print_stats(18)
        self._profiler = None
        return text.getvalue()

    def _encodes(self) -> int:
        """`meshcp_cache_encodes_total` from the server's own /metrics exposition."""
        for line in self._metrics.exposition().decode().splitlines():
            if line.startswith("meshcp_cache_encodes_total "):
                return int(float(line.split()[1]))
        raise RuntimeError("meshcp_cache_encodes_total is not exposed")

    async def _all_hold(self, short: str | None, target: int) -> float:
        """`time.monotonic()` of the ACK after which every connected stream holds its
        class's current content of every type: ACK counts reach `target` first (cheap),
        then the server's per-stream state is asked, so N ACKs from fewer than N distinct
        proxies (a client ACKing twice) never count as "ACKed by all"."""
        reached = await self._tally.reached(short, target)
        types = [resource_types.ENDPOINT] if short == "eds" else list(resource_types.PUSH_ORDER[:4])
        while any(self._proxies.lagging(t, self._cache.get) for t in types):
            reached = await self._tally.reached(short, self._tally.count(short) + 1)
        return reached

    async def _initial(self, clients: int) -> None:
        """Wait until every client ACKed its four initial responses."""
        cpu = time.process_time()
        self._profile(True)
        reached = await self._all_hold(None, 4 * clients)
        self._profile(False)
        cpu = time.process_time() - cpu
        profile = self._dump("initial")
        gc.collect()
        if self._traced is not None:
            profile += traced_growth(self._traced, tracemalloc.take_snapshot(), clients)
        self._control.send(
            {
                "reached": reached,
                "cpu": cpu,
                "rss": rss(),
                "connected": len(self._proxies),
                "acks": dict(self._tally.counts),
                "profile": profile,
            }
        )

    async def _change(self, clients: int) -> None:
        """One ClusterLoadAssignment changes; wait until every client ACKed it."""
        target = self._tally.count("eds") + clients
        encodes = self._encodes()
        self._profile(True)
        build = self._workload.change()
        cpu = time.process_time()
        started = time.monotonic()
        for key, snapshot in build.snapshots.items():
            self._cache.set_snapshot(key, snapshot)
        reached = await self._all_hold("eds", target)
        cpu = time.process_time() - cpu
        self._profile(False)
        self._control.send(
            {
                "set": started,
                "reached": reached,
                "cpu": cpu,
                "encodes": self._encodes() - encodes,
                "build_seconds": build.seconds,
                "acks": dict(self._tally.counts),
                "profile": self._dump("change"),
            }
        )
