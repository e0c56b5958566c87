"""Prometheus's HTTP API (`/api/v1/query`), asked one instant query at a time.

Every failure is one of three kinds the CLI can name in one line: Prometheus did not
answer (`PrometheusUnreachable`), it answered something that is not a query result
(`BadAnswer`), or the query matched nothing (`NoData`). Every request has a deadline, so
no command hangs on a silent server.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

TIMEOUT = 5.0
QUERY_PATH = "/api/v1/query"

#: GETs a path (with its query string) from Prometheus: the status and the body.
Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]


class PrometheusError(Exception):
    """A query meshcp could not answer; its text is the one line the CLI prints."""


class PrometheusUnreachable(PrometheusError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Prometheus at {url} is unreachable: {reason}")
        self.url = url
        self.reason = reason


class BadAnswer(PrometheusError):
    """Prometheus answered, but not with a vector: an error status, bad JSON, a bad query."""


class NoData(PrometheusError):
    """A query matched nothing; the text is the query, or (from the CLI) what is missing."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and value (NaN kept, the CLI shows '-')."""

    labels: dict[str, str]
    value: float


def aiohttp_fetch(url: str, timeout: float = TIMEOUT) -> Fetch:
    """A fetch that GETs from `url` directly, failing after `timeout` seconds."""

    async def fetch(path: str) -> tuple[int, bytes]:
        try:
            client_timeout = aiohttp.ClientTimeout(total=timeout)
            async with (
                aiohttp.ClientSession(timeout=client_timeout) as session,
                session.get(url.rstrip("/") + path) as response,
            ):
                return response.status, await response.read()
        except TimeoutError:
            raise PrometheusUnreachable(url, f"no answer within {timeout:g} s") from None
        except aiohttp.ClientError as error:
            raise PrometheusUnreachable(url, str(error) or type(error).__name__) from None

    return fetch


class Prometheus:
    """Instant queries through a fetch (direct, or from inside the lab's node namespace)."""

    def __init__(self, url: str, fetch: Fetch) -> None:
        self.url = url
        self._fetch = fetch

    async def query(self, promql: str) -> list[Sample]:
        """The instant vector of `promql`; an empty list when nothing matched."""
        status, body = await self._fetch(QUERY_PATH + "?" + urllib.parse.urlencode({"query": promql}))
        data = _data(status, body, self.url)
        if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise BadAnswer(f"Prometheus at {self.url} answered no vector for: {promql}")
        return [_sample(item, self.url) for item in data["result"]]


def _data(status: int, body: bytes, url: str) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        raise BadAnswer(f"Prometheus at {url} answered {status} with no JSON") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error", "") if isinstance(answer, dict) else ""
        raise BadAnswer(f"Prometheus at {url} answered {status}: {error or 'not a success'}")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise BadAnswer(f"Prometheus at {url} answered no data")
    return data


def _sample(item: Any, url: str) -> Sample:
    try:
        labels = {str(k): str(v) for k, v in item["metric"].items()}
        return Sample(labels, float(item["value"][1]))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise BadAnswer(f"Prometheus at {url} answered a malformed sample: {item!r:.200}") from None


def finite(value: float) -> float | None:
    """A value fit for JSON: NaN and infinities (no requests in the window) become None."""
    return value if math.isfinite(value) else None
