"""Mesh scale's report: the median over runs of every figure, and its Markdown tables."""

from __future__ import annotations

import statistics
from typing import Any

from mesh_run import RunResult


def median_run(runs: list[RunResult]) -> dict[str, Any]:
    """Per field, the median over runs (changes matched by name)."""

    def med(values: list[float]) -> float:
        return float(statistics.median(values)) if values else 0.0

    first = runs[0]
    out: dict[str, Any] = {
        k: med([getattr(r, k) for r in runs])
        for k in (
            "listen_s",
            "idle_rss_mb",
            "readyz_s",
            "cold_s",
            "cold_p50_s",
            "cold_cpu_s",
            "cold_rss_mb",
            "cold_bytes",
            "cold_encodes",
            "cold_resources_sent",
            "client_cpu_s",
            "peak_rss_mb",
            "total_cpu_s",
        )
    }
    out.update(mode=first.mode, xds=first.xds, services=first.services, proxies=first.proxies, runs=len(runs))
    changes = []
    for c in first.changes:
        same = [x for r in runs for x in r.changes if x.name == c.name]
        row: dict[str, Any] = {
            k: med([getattr(x, k) for x in same])
            for k in (
                "affected",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "responses",
                "encodes",
                "cpu_s",
                "round_cpu_ms",
                "bytes_sent",
            )
        }
        row["rounds"] = c.rounds
        row["name"] = c.name
        row["pushed"] = c.pushed
        row["resources_sent"] = c.resources_sent
        row["unconverged"] = max(x.unconverged for x in same)
        row["note"] = "; ".join(sorted({x.note for x in same if x.note}))
        changes.append(row)
    out["changes"] = changes
    return out


def table(summary: dict[str, Any], debounce_ms: int) -> str:
    s = summary
    title = f"{s['mode']} / {s['xds']}: {s['services']:,} services, {s['proxies']:,} proxies"
    cold = [
        f"{s['listen_s']:.2f}",
        f"{s['readyz_s']:.2f}",
        f"{s['cold_s']:.2f} ({s['cold_p50_s']:.2f})",
        f"{s['cold_cpu_s']:.1f}",
        f"{s['cold_rss_mb']:.0f}",
        f"{s['cold_bytes'] / 1e6:.1f} MB",
        f"{s['cold_encodes']:,.0f}",
        f"{s['cold_resources_sent']:,.0f}",
        f"{s['client_cpu_s']:.1f}",
    ]
    lines = [
        f"### {title} (median of {s['runs']})",
        "",
        "| cold: listen s | /readyz s | all converged s (p50) | controller CPU s | RSS MB | bytes sent "
        "| encodes | resources sent | load-process CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(cold) + " |",
        "",
        f"| change | affected proxies | p50 ms | p99 ms | max ms | p99 beyond {debounce_ms} ms debounce "
        "| encodes | resources sent (metrics) | controller CPU s | round CPU ms (rounds) "
        "| bytes sent | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for c in s["changes"]:
        sent = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(c["resources_sent"].items())) or "-"
        cells = [
            c["name"],
            f"{c['affected']:,.0f}",
            f"{c['p50_ms']:.0f}",
            f"{c['p99_ms']:.0f}",
            f"{c['max_ms']:.0f}",
            f"{max(0.0, c['p99_ms'] - debounce_ms):.0f}",
            f"{c['encodes']:,.0f}",
            sent,
            f"{c['cpu_s']:.2f}",
            f"{c['round_cpu_ms']:.0f} ({_scopes(c.get('rounds', {}))})",
            f"{c['bytes_sent'] / 1e3:,.0f} KB",
            c["note"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    per_proxy = 1024 * (s["cold_rss_mb"] - s["idle_rss_mb"]) / max(1, s["proxies"])
    lines += [
        "",
        f"Peak RSS (VmHWM) {s['peak_rss_mb']:.0f} MB; RSS when the port opened {s['idle_rss_mb']:.0f} MB, "
        f"so {per_proxy:.0f} KB per proxy after cold convergence (compiled config included); "
        f"controller CPU in all {s['total_cpu_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def _scopes(rounds: dict[str, float]) -> str:
    """`meshcp_reconcile_compiles_total` deltas by scope (`metric_delta` labels such as
    `scope="endpoints`), e.g. "1 endpoints"."""
    found = []
    for label, value in sorted(rounds.items()):
        if value:
            found.append(f"{value:.0f} {label.removeprefix('scope=').strip(chr(34))}")
    return ", ".join(found) or "none"


def ratios(measured: dict[str, Any], baseline: dict[str, Any]) -> str:
    """The medians of two controllers side by side: measured / baseline."""

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    lines = [
        f"| figure | {measured['source']} | {baseline['source']} | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, key, unit in (
        ("cold: all converged", "cold_s", "s"),
        ("cold: controller CPU", "cold_cpu_s", "s"),
        ("peak RSS", "peak_rss_mb", "MB"),
    ):
        a, b = measured[key], baseline[key]
        lines.append(f"| {name} ({unit}) | {a:.2f} | {b:.2f} | {ratio(a, b)} |")
    before = {c["name"]: c for c in baseline["changes"]}
    for change in measured["changes"]:
        other = before.get(change["name"])
        if other is None:
            continue
        for name, key in (
            ("p99 ms", "p99_ms"),
            ("round CPU ms", "round_cpu_ms"),
            ("controller CPU s", "cpu_s"),
        ):
            a, b = change[key], other[key]
            lines.append(f"| {change['name']}: {name} | {a:.2f} | {b:.2f} | {ratio(a, b)} |")
    return "\n".join(lines) + "\n"
