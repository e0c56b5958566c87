"""Reconcile rounds: every settled mesh state, compiled, published and handed to the streams.

A round applies the state's MeshConfig run-time settings, compiles (in a worker thread)
and publishes every proxy class (`Reconciler`, then `Publisher`), gives the classifier
the round's tables and lets the xDS server move streams whose class changed; the first
round makes the controller ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from meshcp.model.state import MeshState
from meshcp.runtime.classify import ProxyClassifier
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.publish import Publisher
from meshcp.runtime.reconcile import Reconciler
from meshcp.runtime.store import Store
from meshcp.telemetry.readiness import Readiness

log = logging.getLogger("meshcp.rounds")

#: The readiness part that the first round completes.
MESH = "mesh"


class Rounds:
    """Runs the rounds of one controller and holds MeshConfig's run-time settings."""

    def __init__(
        self,
        store: Store,
        reconciler: Reconciler,
        publisher: Publisher,
        classifier: ProxyClassifier,
        readiness: Readiness,
        *,
        reclassify: Callable[[], object],
        cert_validity: timedelta,
        on_round: Callable[[float, float], None] | None = None,
        after_round: Callable[[], None] | None = None,
    ) -> None:
        """`on_round` is told how long each completed round took, in seconds of wall time
        and of CPU time (metrics);
        `after_round` runs after it (the process's `GcFreeze`, when its entry point has one)."""
        self._store = store
        self._reconciler = reconciler
        self._publisher = publisher
        self._classifier = classifier
        self._readiness = readiness
        self._reclassify = reclassify
        self._on_round = on_round
        self._after_round = after_round
        self._tables: tuple[object, object, object, object] = (None, None, None, None)
        #: Workload certificate lifetime: `--cert-validity`, unless a MeshConfig sets one.
        self.cert_validity = cert_validity
        self._command_line_validity = cert_validity

    async def run(self) -> None:
        """Compile every settled state; the first one makes the controller ready."""
        async for state in self._store.states():
            started = time.perf_counter()
            self.apply_mesh_config(state)
            # In a worker thread: a full compile takes long enough at scale to starve
            # the xDS streams if it held the loop; the loop keeps serving them (the
            # GIL switches every few milliseconds) and installs the result.
            classes, cpu = await asyncio.to_thread(self._compile, state)
            loop_cpu = time.thread_time()
            self._reconciler.report(state)
            self._publisher.update(classes)
            policy = self._reconciler.policy
            tables = (policy.proxies, policy.pod_classes, policy.classes, self._reconciler.proxyless_keys)
            # The same tables (an endpoints-only round keeps them) move no stream: skip
            # the pass over every open stream.
            if any(new is not old for new, old in zip(tables, self._tables, strict=True)):
                self._classifier.update(*tables)
                self._reclassify()
                self._tables = tables
            self._readiness.mark_synced(MESH)
            if self._on_round is not None:
                self._on_round(time.perf_counter() - started, cpu + time.thread_time() - loop_cpu)
            if self._after_round is not None:
                self._after_round()

    def _compile(self, state: MeshState) -> tuple[list[ProxyClass], float]:
        """The compile, and the CPU time it took (this thread's alone)."""
        started = time.thread_time()
        classes = self._reconciler.compile(state)
        return classes, time.thread_time() - started

    def apply_mesh_config(self, state: MeshState) -> None:
        """MeshConfig's run-time settings, when the mesh has a MeshConfig: the debounce
        bounds (from the next burst of changes on) and, when it sets one, the lifetime of
        certificates issued from now on (those in use are renewed on their own schedule).
        OSM's MeshConfig has no debounce: alone, it leaves the command line's, and sets
        the lifetime with `serviceCertValidityDuration`."""
        if not state.mesh_configs and not state.osm_mesh_configs:
            return
        mesh = state.mesh_config
        if state.mesh_configs and self._store.debounce != (mesh.debounce_window, mesh.debounce_max):
            self._store.set_debounce(mesh.debounce_window, mesh.debounce_max)
            log.info("debounce: %gs quiet window, at most %gs", mesh.debounce_window, mesh.debounce_max)
        validity = self._command_line_validity
        if mesh.is_set("cert_validity_seconds"):  # MeshConfig's default does not override the flag
            validity = timedelta(seconds=mesh.cert_validity_seconds)
        if validity != self.cert_validity:
            self.cert_validity = validity
            log.info("workload certificates are now issued for %s", validity)
