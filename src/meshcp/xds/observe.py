"""The observer that turns protocol events into metrics and log lines."""

from __future__ import annotations

import logging

from meshcp.cache import resource_types
from meshcp.telemetry.metrics import Metrics
from meshcp.xds.stream import Nack, Outgoing

log = logging.getLogger("meshcp.xds")


class MetricsObserver:
    """Records ACKs, NACKs, stale requests and responses for one server."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_ack(self, type_url: str, latency: float) -> None:
        short = resource_types.short_name(type_url)
        self._metrics.acks.labels(short).inc()
        self._metrics.push_latency.labels(short).observe(latency)

    def on_nack(self, node_id: str, type_url: str, nack: Nack) -> None:
        short = resource_types.short_name(type_url)
        self._metrics.nacks.labels(short).inc()
        log.warning(
            "proxy %s rejected %s version %s (resources: %s): %s",
            node_id or "<unknown>",
            short,
            nack.version[:12],
            ", ".join(nack.names) or "-",
            nack.message,
        )

    def on_stale(self, type_url: str) -> None:
        self._metrics.stale.labels(resource_types.short_name(type_url)).inc()

    def on_response(self, outgoing: Outgoing) -> None:
        short = resource_types.short_name(outgoing.type_url)
        self._metrics.responses.labels(short).inc()
        if outgoing.names:
            self._metrics.resources_sent.labels(short).inc(len(outgoing.names))
