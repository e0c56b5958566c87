"""The fan-out benchmark's figures: a run's raw figures, their medians over runs, and the
lines `xds_fanout.py` prints (the table, the per-client ratios, the verdict on the targets).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class RunResult:
    mode: str
    clients: int
    classes: int
    resources: int
    initial_s: float
    initial_server_cpu_s: float
    initial_client_cpu_s: float
    rss_idle_mb: float
    rss_per_client_kb: float
    change_s: list[float] = field(default_factory=list)  # set_snapshot -> server counted N ACKs
    change_client_s: list[float] = field(default_factory=list)  # set_snapshot -> last client ACK sent
    change_p50_s: list[float] = field(default_factory=list)  # set_snapshot -> median client ACK sent
    change_server_cpu_s: list[float] = field(default_factory=list)
    change_client_cpu_s: list[float] = field(default_factory=list)
    encodes: list[int] = field(default_factory=list)
    build_s: list[float] = field(default_factory=list)  # the new snapshot: 1 encode + Snapshot objects
    naive_encodes: int = 0
    naive_seconds: float = 0.0
    profiles: dict[str, str] = field(default_factory=dict)


@dataclass
class Summary:
    """Medians over runs (each run's change figure is the median of its changes)."""

    mode: str
    classes: int
    clients: int
    runs: int
    initial_s: float
    change_s: float
    change_client_s: float
    change_p50_s: float
    initial_server_cpu_s: float
    change_server_cpu_s: float
    change_client_cpu_s: float
    initial_client_cpu_s: float
    rss_per_client_kb: float
    rss_idle_mb: float
    encodes: int
    build_ms: float
    naive_encodes: int
    naive_ms: float


def summarise(results: list[RunResult]) -> Summary:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    first = results[0]
    return Summary(
        mode=first.mode,
        classes=first.classes,
        clients=first.clients,
        runs=len(results),
        initial_s=med([r.initial_s for r in results]),
        change_s=med([med(r.change_s) for r in results]),
        change_client_s=med([med(r.change_client_s) for r in results]),
        change_p50_s=med([med(r.change_p50_s) for r in results]),
        initial_server_cpu_s=med([r.initial_server_cpu_s for r in results]),
        change_server_cpu_s=med([med(r.change_server_cpu_s) for r in results]),
        change_client_cpu_s=med([med(r.change_client_cpu_s) for r in results]),
        initial_client_cpu_s=med([r.initial_client_cpu_s for r in results]),
        rss_per_client_kb=med([r.rss_per_client_kb for r in results]),
        rss_idle_mb=med([r.rss_idle_mb for r in results]),
        encodes=max(e for r in results for e in r.encodes),
        build_ms=med([med(r.build_s) for r in results]) * 1000,
        naive_encodes=first.naive_encodes,
        naive_ms=med([r.naive_seconds for r in results]) * 1000,
    )


_COLUMNS = (
    ("mode", "{:>5}", "mode"),
    ("cls", "{:>3}", "classes"),
    ("clients", "{:>7}", "clients"),
    ("initial s", "{:>9.2f}", "initial_s"),
    ("change s", "{:>8.3f}", "change_s"),
    ("cli p50 s", "{:>9.3f}", "change_p50_s"),
    ("cli last s", "{:>10.3f}", "change_client_s"),
    ("srv CPU init", "{:>12.2f}", "initial_server_cpu_s"),
    ("cli CPU init", "{:>12.2f}", "initial_client_cpu_s"),
    ("srv CPU chg", "{:>11.3f}", "change_server_cpu_s"),
    ("cli CPU chg", "{:>11.3f}", "change_client_cpu_s"),
    ("RSS KB/cli", "{:>10.1f}", "rss_per_client_kb"),
    ("enc/chg", "{:>7}", "encodes"),
)


def table(summaries: list[Summary]) -> str:
    head = " | ".join(
        f"{title:>{len(fmt.format(getattr(summaries[0], key)))}}" for title, fmt, key in _COLUMNS
    )
    lines = [head, "-" * len(head)]
    for s in summaries:
        lines.append(" | ".join(fmt.format(getattr(s, key)) for _, fmt, key in _COLUMNS))
    return "\n".join(lines)


def ratios(base: Summary, big: Summary) -> str:
    """Per-client cost at `big` over per-client cost at `base` (1.0 = linear scaling)."""
    scale = big.clients / base.clients

    def per(a: float, b: float) -> str:
        return f"{(b / scale) / a:.2f}" if a > 0 else "n/a"

    return (
        f"{big.mode:>5} cls={big.classes}: per-client ratio {big.clients}/{base.clients}: "
        f"initial {per(base.initial_s, big.initial_s)}, change {per(base.change_s, big.change_s)}, "
        f"srv CPU/change {per(base.change_server_cpu_s, big.change_server_cpu_s)}, "
        f"RSS/client {big.rss_per_client_kb / base.rss_per_client_kb:.2f}"
    )


#: The targets of the issue, for one server process on a 2-core machine.
TARGET_CHANGE_S = 2.0
TARGET_RSS_KB = 30.0


def verdict(s: Summary) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return (
        f"{s.mode:>5} cls={s.classes} N={s.clients}: all connected and ACKed: met; "
        f"change ACKed by all <= {TARGET_CHANGE_S:.0f} s: {mark(s.change_s <= TARGET_CHANGE_S)} "
        f"({s.change_s:.2f} s); one encode per change: {mark(s.encodes == 1)}; "
        f"<= {TARGET_RSS_KB:.0f} KB/client: {mark(s.rss_per_client_kb <= TARGET_RSS_KB)} "
        f"({s.rss_per_client_kb:.1f} KB)"
    )
