"""Prometheus metrics of one controller, on its own registry (no process-global state)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Convergence buckets from 0.1 s to 30 s, as users watch it (rule 22 of docs/xds-protocol.md).
PUSH_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Everything meshcp exports, created together so every server shares one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected = Gauge(
            "meshcp_xds_connected_proxies", "Open ADS streams, by stream kind.", ["stream"], registry=r
        )
        self.responses = Counter(
            "meshcp_xds_responses", "Discovery responses sent, by resource type.", ["type"], registry=r
        )
        self.resources_sent = Counter(
            "meshcp_xds_resources_sent", "Resources sent in responses, by type.", ["type"], registry=r
        )
        self.acks = Counter("meshcp_xds_acks", "Responses ACKed by proxies, by type.", ["type"], registry=r)
        self.nacks = Counter(
            "meshcp_xds_nacks", "Responses NACKed by proxies, by type.", ["type"], registry=r
        )
        self.stale = Counter(
            "meshcp_xds_stale_requests", "Requests ignored for a stale nonce, by type.", ["type"], registry=r
        )
        self.push_latency = Histogram(
            "meshcp_xds_push_latency_seconds",
            "Time from a configuration change to the proxy's ACK of it, by type.",
            ["type"],
            buckets=PUSH_LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected_streams = Counter(
            "meshcp_xds_rejected_streams", "ADS streams refused, by reason.", ["reason"], registry=r
        )
        self.refused_secrets = Counter(
            "meshcp_xds_refused_secrets",
            "Secret names refused to a proxy because they belong to another identity.",
            registry=r,
        )
        self.problems = Gauge(
            "meshcp_invalid_objects",
            "Objects reported invalid or conflicting and skipped, by kind (see /debug/problems).",
            ["kind"],
            registry=r,
        )
        self.encodes = Gauge(
            "meshcp_cache_encodes", "Resources serialised since start (one per unique content).", registry=r
        )
        self.certificate_installed = Gauge(
            "meshcp_workload_certificate_installed_timestamp_seconds",
            "Unix time the current workload certificate of an identity (ns/sa) was installed.",
            ["identity"],
            registry=r,
        )
        self._installed: set[str] = set()

    def certificate_installed_at(self, identity: str, when: float, live: Iterable[str]) -> None:
        """Record `identity`'s new certificate; drop the series of identities not in `live`."""
        for gone in self._installed - set(live) - {identity}:
            self.certificate_installed.remove(gone)
            self._installed.discard(gone)
        self.certificate_installed.labels(identity).set(when)
        self._installed.add(identity)

    def exposition(self) -> bytes:
        """The text exposition format served at /metrics."""
        return generate_latest(self.registry)
