"""The wall clock, injectable.

Certificate validity is defined in wall-clock time, so every decision about it (renew,
rotate, reject as expired) reads a `Clock`. The monotonic clock is deliberately not used
for these: it stops during suspend and is unrelated to the times written in certificates,
so arithmetic on it across hours or days silently drifts from reality.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Returns the current time as a timezone-aware UTC datetime."""


def utc_now() -> datetime:
    """The default `Clock`."""
    return datetime.now(UTC)
