"""Series of things that have not happened yet read 0, not nothing: a dashboard's NACK or
send-error panel of a healthy mesh shows 0 (deploy/grafana), without `or vector(0)`."""

from __future__ import annotations

from meshcp.cache.resource_types import SHORT_NAMES
from meshcp.sources.kubernetes import RESOURCES
from meshcp.telemetry.metrics import (
    NO_NODE,
    OBJECT_KINDS,
    SEND_ERROR_REASONS,
    STREAM_KINDS,
    XDS_TYPES,
    Metrics,
)
from meshcp.xds.delta import DeltaProtocol
from meshcp.xds.sotw import SotwProtocol


def test_the_known_label_values_are_the_ones_the_other_layers_use() -> None:
    assert set(XDS_TYPES) == set(SHORT_NAMES.values())
    assert set(STREAM_KINDS) == {SotwProtocol.kind, DeltaProtocol.kind}
    assert set(OBJECT_KINDS) == {resource.kind for resource in RESOURCES}


def test_a_new_controller_exports_zeros_for_every_known_label_value() -> None:
    value = Metrics().registry.get_sample_value
    for short in XDS_TYPES:
        for name in ("responses", "resources_sent", "acks", "nacks", "stale_requests"):
            assert value(f"meshcp_xds_{name}_total", {"type": short}) == 0, (name, short)
    for kind in STREAM_KINDS:
        assert value("meshcp_xds_connected_proxies", {"stream": kind}) == 0
    for reason in SEND_ERROR_REASONS:
        assert value("meshcp_xds_send_errors_total", {"reason": reason}) == 0
    assert value("meshcp_xds_rejected_streams_total", {"reason": NO_NODE}) == 0
    for kind in OBJECT_KINDS:
        assert value("meshcp_invalid_objects", {"kind": kind}) == 0


def test_a_providers_failures_start_at_zero_with_its_first_certificate() -> None:
    metrics = Metrics()
    value = metrics.registry.get_sample_value
    assert value("meshcp_certificate_issue_failures_total", {"provider": "internal"}) is None
    metrics.certificate_issued("internal", 0.01)
    assert value("meshcp_certificates_issued_total", {"provider": "internal"}) == 1
    assert value("meshcp_certificate_issue_failures_total", {"provider": "internal"}) == 0
    metrics.certificate_failed("vault", 1.0)
    assert value("meshcp_certificates_issued_total", {"provider": "vault"}) == 0
    assert value("meshcp_certificate_issue_failures_total", {"provider": "vault"}) == 1
