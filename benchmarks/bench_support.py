"""Helpers the benchmarks share: describing the machine, reading py-spy's output."""

from __future__ import annotations

import collections
import contextlib
import os
import platform
import re
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


def top_functions(path: Path, count: int = 20) -> str:
    """Share of samples per function in py-spy's raw output: self time, then inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        total += n
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples; self:"]
    lines += [f"  {100 * n / total:5.1f}% {frame}" for frame, n in own.most_common(count)]
    lines.append("inclusive (below the event loop):")
    below = [(f, n) for f, n in inclusive.most_common() if n < 0.99 * total]
    lines += [f"  {100 * n / total:5.1f}% {frame}" for frame, n in below[:count]]
    return "\n".join(lines)
