"""Small helpers the benchmarks share: describing the machine, its load, a percentile."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cpu = model or platform.processor()
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"


def load_average() -> float:
    """The 1-minute load average (other work on a shared machine moves wall times)."""
    return os.getloadavg()[0]


def percentile(values: list[float], q: float) -> float:
    """The value at rank `q` (0..1) of `values`, nearest rank; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
