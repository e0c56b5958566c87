"""What the KPI endpoints (`/dashboard/data`, the TrafficMetrics API) answer when
Prometheus cannot: one status and one reason for each way it fails, said the same by both."""

from __future__ import annotations

from meshcp.kpi.prometheus import BadAnswer, PrometheusError, PrometheusUnreachable

NOT_CONFIGURED = "Prometheus is not configured: start the controller with meshcp serve --prometheus-url URL"
#: Not configured or not answering: the service is unavailable, not broken.
UNAVAILABLE = 503
#: Prometheus answered something that is not a query result: a bad gateway.
BAD_GATEWAY = 502

#: The errors `status_of` maps.
HANDLED = (PrometheusUnreachable, BadAnswer)


def status_of(error: PrometheusError) -> int:
    """The HTTP status for a Prometheus failure."""
    return BAD_GATEWAY if isinstance(error, BadAnswer) else UNAVAILABLE
