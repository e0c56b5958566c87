"""Reconcile rounds of a running controller (meshcp.runtime.rounds), on a file source: each
settled change is one round, counted and timed on the controller's metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
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
