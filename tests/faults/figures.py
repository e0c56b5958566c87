"""What the fault tests measured, for `docs/reliability.md`: recovery times are recorded,
never asserted (no timed assertions). With `MESHCP_FAULT_FIGURES=FILE` set, each figure is
appended to FILE as one JSON line; otherwise they are dropped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def record(fault: str, what: str, value: float, unit: str = "s") -> None:
    """Append `fault`'s figure `what` (e.g. "recovery after the API returned")."""
    target = os.environ.get("MESHCP_FAULT_FIGURES")
    if not target:
        return
    line = json.dumps({"fault": fault, "what": what, "value": round(value, 3), "unit": unit})
    with Path(target).open("a") as out:
        out.write(line + "\n")


class Stopwatch:
    """Seconds since it was made (monotonic)."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self._start
