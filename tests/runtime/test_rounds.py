"""Reconcile rounds of a running controller (meshcp.runtime.rounds), on a file source: each
settled change is one round, counted and timed on the controller's metrics."""

from __future__ import annotations

import asyncio
import shutil
import threading
from datetime import timedelta
from pathlib import Path

from meshcp.cache import Encoder, SnapshotCache
from meshcp.certs import InternalCA, Issuer, MemoryStore, workload_certificates
from meshcp.model.state import MeshState
from meshcp.runtime.classify import ProxyClassifier
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.publish import Publisher
from meshcp.runtime.reconcile import Reconciler
from meshcp.runtime.rounds import MESH, Rounds
from meshcp.runtime.settings import Address, Settings
from meshcp.runtime.store import Store
from meshcp.sources.events import Synced, Upsert
from meshcp.telemetry.readiness import Readiness
from tests.policy.mesh import Bookstore
from tests.support import eventually

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookstore"

EXTRA_SERVICE = """
---
apiVersion: v1
kind: Service
metadata:
  name: bookstore-extra
  namespace: bookstore
spec:
  clusterIP: 10.96.10.99
  selector:
    app: bookstore
  ports:
  - name: http
    port: 14001
    targetPort: 14001
"""


def rounds(runtime: ControllerRuntime) -> tuple[float, float]:
    value = runtime.metrics.registry.get_sample_value
    return (
        value("meshcp_reconcile_rounds_total") or 0.0,
        value("meshcp_reconcile_round_duration_seconds_count") or 0.0,
    )


async def test_each_settled_change_is_a_counted_and_timed_round(tmp_path: Path) -> None:
    source = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("apps", "*.md"))
    settings = Settings(
        xds_address=Address("127.0.0.1", 0),
        http_address=Address("127.0.0.1", 0),
        source=source,
        debounce_window=0.01,
        debounce_max=0.1,
    )
    runtime = await ControllerRuntime.open(settings)
    async with runtime:

        async def first() -> bool:
            return runtime.readiness.ready and rounds(runtime)[0] >= 1

        await eventually(first, what="the first round")
        done = rounds(runtime)
        assert done[0] == done[1]  # each completed round is timed once
        with (source / "services.yaml").open("a") as services:
            services.write(EXTRA_SERVICE)

        async def another() -> bool:
            return rounds(runtime)[0] > done[0]

        await eventually(another, what="a round after the change")
        after = rounds(runtime)
        assert after[0] == after[1]
        sum_seconds = runtime.metrics.registry.get_sample_value("meshcp_reconcile_round_duration_seconds_sum")
        assert sum_seconds is not None and sum_seconds > 0


async def test_a_compile_runs_beside_the_event_loop() -> None:
    """The compile runs in a worker thread: while it runs, the loop goes on (it is what
    serves every xDS stream). The compile here waits until a loop task lets it go; on the
    loop it would wait for ever (and fail after 10 s)."""
    started, released = threading.Event(), threading.Event()

    class Held(Reconciler):
        def compile(self, state: MeshState) -> list[ProxyClass]:
            started.set()
            assert released.wait(10), "nothing let the compile go: it held the event loop"
            return super().compile(state)

    encoder = Encoder()
    ca = await InternalCA.open(MemoryStore())
    store = Store(window=0, max_wait=0)
    store.expect("test")
    readiness = Readiness()
    readiness.expect(MESH)
    rounds = Rounds(
        store,
        Held(encoder),
        Publisher(SnapshotCache(), encoder, workload_certificates(Issuer(ca))),
        ProxyClassifier(),
        readiness,
        reclassify=lambda: 0,
        cert_validity=timedelta(hours=1),
    )
    for obj in Bookstore().objects():
        store.apply(Upsert(obj))
    store.apply(Synced("test"))
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(rounds.run())

        async def compiling() -> bool:
            return started.is_set()

        await eventually(compiling, what="the compile to start")
        assert not readiness.ready  # the round is not over: the loop is free meanwhile
        released.set()

        async def ready() -> bool:
            return readiness.ready

        await eventually(ready, what="the round to finish")
        running.cancel()
