"""The injector's Prometheus metrics: admissions and their latency by result, TLS reloads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESULTS = ("injected", "skipped", "denied", "malformed", "error")


class InjectorMetrics:
    """The injector's Prometheus metrics, on their own registry (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.admissions = Counter(
            "meshcp_injector_admissions", "Admission requests answered, by result.", ["result"], registry=r
        )
        for result in RESULTS:
            self.admissions.labels(result)
        self.latency = Histogram(
            "meshcp_injector_admission_duration_seconds",
            "Time to answer an admission request, by result.",
            ["result"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tls_reloads = Counter(
            "meshcp_injector_tls_reloads",
            "Serving certificate reloads after its files changed, by result.",
            ["result"],
            registry=r,
        )

    def tls_reloaded(self, ok: bool) -> None:
        self.tls_reloads.labels("ok" if ok else "failed").inc()

    def count(self, result: str) -> float:
        """Admissions answered with `result` so far."""
        value = self.registry.get_sample_value("meshcp_injector_admissions_total", {"result": result})
        return value or 0.0

    def observe(self, result: str, seconds: float) -> None:
        self.admissions.labels(result).inc()
        self.latency.labels(result).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
