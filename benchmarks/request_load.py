"""A closed-loop load on one server: `concurrency` fetches kept in flight, and what comes out
(requests per second, latency percentiles, server and client CPU per request).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench_support import percentile


@dataclass
class Result:
    server: str
    requests: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    response_bytes: int
    resources: int
    client_cpu_ms_per_request: float  # this process: is the client the bottleneck?


async def drive(
    fetch: Callable[[], Awaitable[int]], concurrency: int, warmup: float, duration: float
) -> tuple[list[float], float, int, int]:
    """Keep `concurrency` fetches in flight; latencies of those that started after the warm-up,
    the measured seconds, the response size and how many fetches completed in all."""
    latencies: list[float] = []
    size = completed = 0
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def worker() -> None:
        nonlocal size, completed
        while True:
            began = time.monotonic()
            if began >= stop_at:
                return
            size = await fetch()
            completed += 1
            if began >= measure_from:
                latencies.append(time.monotonic() - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, min(time.monotonic(), stop_at + 60) - measure_from, size, completed


async def measure(
    server: str,
    fetch: Callable[[], Awaitable[int]],
    expected: int,
    cpu: Callable[[], float],
    concurrency: int,
    warmup: float,
    duration: float,
) -> Result:
    """A second of fetches first (connections up, the proxy's class compiled), then the
    measured load: `warmup` seconds, then `duration` seconds of timed fetches. `cpu` is the
    server's CPU seconds so far; it is charged to the timed fetches pro rata."""
    await drive(fetch, concurrency, 0.0, 1.0)
    cpu0, own0 = cpu(), time.process_time()
    latencies, seconds, size, completed = await drive(fetch, concurrency, warmup, duration)
    used = (cpu() - cpu0) / completed * len(latencies)
    client = (time.process_time() - own0) / completed
    return summarize(server, latencies, seconds, used, size, expected, client)


def summarize(
    server: str, latencies: list[float], seconds: float, cpu: float, size: int, expected: int, client: float
) -> Result:
    count = len(latencies)
    return Result(
        server,
        count,
        seconds,
        count / seconds if seconds > 0 else 0.0,
        1000 * percentile(latencies, 0.5),
        1000 * percentile(latencies, 0.99),
        1000 * cpu / count if count else 0.0,
        size,
        expected,
        1000 * client,
    )
