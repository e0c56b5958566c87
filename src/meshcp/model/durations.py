"""Durations as people write them, in seconds: one parser for manifests and the command line.

The syntax is Go's (`100ms`, `1h30m`, `0`), which is what Kubernetes users write in YAML;
where a lifetime is meant (certificate validity on the command line) days (`7d`) are
allowed too. One parser, so that a duration means the same wherever it is written.
"""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_duration(text: str, *, allow_days: bool = False) -> float:
    """`text` in seconds: a sequence of decimal numbers each with a unit (ns, us, ms, s, m,
    h, and d when `allow_days`), or `0`. Raises ValueError saying what a duration looks like."""
    if text == "0":
        return 0.0
    seconds, position = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != position or (match.group(2) == "d" and not allow_days):
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        examples = "30s, 10m, 24h or 7d" if allow_days else "100ms, 1s, 1h30m or 24h"
        units = "ns, us, ms, s, m, h, d" if allow_days else "ns, us, ms, s, m, h"
        raise ValueError(f"{text!r} is not a duration like {examples} (units: {units})")
    return seconds
