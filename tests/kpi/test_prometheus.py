"""The Prometheus client turns every answer into samples or one named error."""

from __future__ import annotations

import json
import math
import urllib.parse
from typing import Any

import pytest

from meshcp.kpi.prometheus import BadAnswer, Prometheus, PrometheusUnreachable, aiohttp_fetch, finite


def _client(status: int, body: Any, seen: list[str] | None = None) -> Prometheus:
    async def fetch(path: str) -> tuple[int, bytes]:
        if seen is not None:
            seen.append(path)
        return status, body if isinstance(body, bytes) else json.dumps(body).encode()

    return Prometheus("http://prom", fetch)


async def test_a_vector_becomes_samples() -> None:
    seen: list[str] = []
    answer = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {"pod": "a"}, "value": [1, "NaN"]}]},
    }
    samples = await _client(200, answer, seen).query('up{job="x"}')
    assert samples[0].labels == {"pod": "a"}
    assert math.isnan(samples[0].value)
    assert finite(samples[0].value) is None
    path, _, query = seen[0].partition("?")
    assert path == "/api/v1/query"
    assert urllib.parse.parse_qs(query) == {"query": ['up{job="x"}']}


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, {"status": "error", "error": "parse error"}, "answered 400: parse error"),
        (200, b"<html>", "answered 200 with no JSON"),
        (200, {"status": "success", "data": {"resultType": "matrix", "result": []}}, "no vector"),
        (200, {"status": "success", "data": {"resultType": "vector", "result": [{"value": 1}]}}, "malformed"),
    ],
)
async def test_bad_answers_are_named(status: int, body: Any, message: str) -> None:
    with pytest.raises(BadAnswer, match=message):
        await _client(status, body).query("up")


async def test_an_unreachable_url_is_named() -> None:
    client = Prometheus("http://127.0.0.1:9", aiohttp_fetch("http://127.0.0.1:9", timeout=2))
    with pytest.raises(PrometheusUnreachable, match=r"Prometheus at http://127.0.0.1:9 is unreachable"):
        await client.query("up")
