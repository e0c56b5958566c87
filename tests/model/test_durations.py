"""Durations: Go's syntax in manifests, plus days where the caller allows them."""

from __future__ import annotations

import pytest

from meshcp.model.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("50ms", 0.05),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1h30m", 5400.0),
        ("2m3s", 123.0),
        ("100us", 1e-4),
        ("100µs", 1e-4),
        ("10ns", 1e-8),
        ("24h", 86400.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(text, allow_days=True) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "100", "1x", "s", "1s ", " 1s", "-1s", "1h 30m", "1d", "forever"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration like 100ms, 1s, 1h30m or 24h \(units: "):
        parse_duration(text)


def test_days_only_when_allowed() -> None:
    assert parse_duration("7d", allow_days=True) == 7 * 86400
    assert parse_duration("1d12h", allow_days=True) == 36 * 3600
    with pytest.raises(ValueError, match=r"^'forever' is not a duration like 30s, 10m, 24h or 7d"):
        parse_duration("forever", allow_days=True)
