"""The controller's metrics object (meshcp.telemetry.metrics): one registry each, values
read at scrape time exposed with the right type, the build info."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from meshcp.telemetry.metrics import Metrics, version


def families(metrics: Metrics) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(metrics.exposition().decode())}


def test_the_encoders_count_is_a_counter_read_when_scraped() -> None:
    metrics = Metrics()
    count = 3
    metrics.count_encodes(lambda: count)
    assert families(metrics)["meshcp_cache_encodes"] == "counter"
    assert metrics.registry.get_sample_value("meshcp_cache_encodes_total") == 3
    count = 5
    assert metrics.registry.get_sample_value("meshcp_cache_encodes_total") == 5


def test_expiry_gauges_have_no_sample_until_there_is_something_to_expire() -> None:
    metrics = Metrics()
    soonest: float | None = None
    metrics.read_expiries(lambda: 1e9, lambda: soonest)
    value = metrics.registry.get_sample_value
    assert value("meshcp_ca_root_expiry_timestamp_seconds") == 1e9
    assert value("meshcp_workload_certificate_expiry_timestamp_seconds") is None
    assert families(metrics)["meshcp_workload_certificate_expiry_timestamp_seconds"] == "gauge"
    soonest = 2e9
    assert value("meshcp_workload_certificate_expiry_timestamp_seconds") == 2e9


def test_each_controller_has_its_own_registry_with_process_and_build_metrics() -> None:
    first, second = Metrics(), Metrics()
    first.round_done(0.5)
    assert first.registry.get_sample_value("meshcp_reconcile_rounds_total") == 1
    assert second.registry.get_sample_value("meshcp_reconcile_rounds_total") == 0
    assert first.registry.get_sample_value("meshcp_build_info", {"version": version()}) == 1
    assert "process_cpu_seconds" in families(first)
    assert "python_info" in families(first)
