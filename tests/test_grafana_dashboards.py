"""The Grafana dashboards in deploy/grafana, offline: valid JSON of Grafana's dashboard
model, every panel queries the `${datasource}` variable, every variable used is defined,
every metric and label named is one meshcp, its sidecars or Prometheus exports, success is
"not 5xx", workloads are grouped by the rule `meshcp stat` uses, and Prometheus' own
parser (promtool) accepts every expression. tests/lab/test_lab_grafana.py runs them all
against real data."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from meshcp.injector.metrics import InjectorMetrics
from meshcp.kpi.queries import DEPLOY_POD
from meshcp.sidecar import bootstrap
from tests.support import grafana

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "observability.md"
EXPECTED = {
    "meshcp-control-plane.json",
    "meshcp-pod.json",
    "meshcp-service-to-service.json",
    "meshcp-workload-to-workload.json",
}
DASHBOARDS = grafana.paths()
#: Panel types with targets, and rows (which hold none).
PANEL_TYPES = {"stat", "timeseries", "table", "row"}
UNITS = {
    "reqps",
    "ops",
    "cps",
    "percentunit",
    "ms",
    "s",
    "dateTimeFromNow",
    "bytes",
    "short",
    "none",
}
#: The series the sidecar's keep-list lets out, each with a stat name Envoy gives it: the
#: keep-list must let that stat through (`test_sidecar_metrics_are_on_the_keep_list`).
SIDECAR_METRICS = {
    "envoy_cluster_upstream_rq_total": "cluster.ns/svc|80.upstream_rq_total",
    "envoy_cluster_upstream_rq_xx": "cluster.ns/svc|80.upstream_rq_5xx",
    "envoy_cluster_upstream_rq_time": "cluster.ns/svc|80.upstream_rq_time",
    "envoy_cluster_upstream_cx_total": "cluster.ns/svc|80|local.upstream_cx_total",
    "envoy_cluster_upstream_cx_active": "cluster.ns/svc|80.upstream_cx_active",
    "envoy_cluster_ssl_handshake": "cluster.ns/svc|80.ssl.handshake",
    "envoy_http_downstream_rq_total": "http.inbound.8080.downstream_rq_total",
    "envoy_http_downstream_rq_xx": "http.inbound.8080.downstream_rq_5xx",
    "envoy_http_downstream_rq_time": "http.inbound.8080.downstream_rq_time",
    "envoy_server_live": "server.live",
    "envoy_server_uptime": "server.uptime",
    "envoy_control_plane_connected_state": "control_plane.connected_state",
}
SIDECAR_HISTOGRAMS = {"envoy_cluster_upstream_rq_time", "envoy_http_downstream_rq_time"}
#: Labels of the sidecar series: the bootstrap's tags and Envoy's default ones.
SIDECAR_LABELS = {
    bootstrap.SOURCE_NAMESPACE,
    bootstrap.SOURCE_POD,
    bootstrap.SOURCE_SERVICE_ACCOUNT,
    bootstrap.DESTINATION_NAMESPACE,
    bootstrap.DESTINATION_SERVICE,
    bootstrap.DESTINATION_PORT,
    bootstrap.LOCAL_SERVICE,
    "envoy_response_code_class",
    "envoy_http_conn_manager_prefix",
}
#: Labels Prometheus adds to every target's series (the lab and deploy/prometheus), and
#: the bucket label of histograms.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "le"}
_DOC_ROW = re.compile(r"^\| `(\w+)` \| (\w+) \|([^|]*)\|", re.MULTILINE)


def _documented() -> dict[str, tuple[str, set[str]]]:
    """docs/observability.md's tables: name -> (type, labels)."""
    return {
        name: (kind, set(re.findall(r"`(\w+)`", labels)))
        for name, kind, labels in _DOC_ROW.findall(DOCS.read_text())
    }


def _injector() -> dict[str, tuple[str, set[str]]]:
    """The injector's metrics, from its registry (name as exposed -> type, labels), used
    once so that every labelled family has a child to show its labels."""
    metrics = InjectorMetrics()
    metrics.observe("injected", 0.01)
    metrics.tls_reloaded(True)
    found = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = (family.type, {label for sample in family.samples for label in sample.labels})
    return found


def known_metrics() -> dict[str, set[str]]:
    """Every series name a dashboard may select, with the labels it carries."""
    found: dict[str, set[str]] = {"up": set()}
    for name, (kind, labels) in {**_documented(), **_injector()}.items():
        if kind == "histogram":
            for suffix in ("_bucket", "_count", "_sum"):
                found[name + suffix] = labels
        else:
            found[name] = labels
    for name in SIDECAR_METRICS:
        if name in SIDECAR_HISTOGRAMS:
            for suffix in ("_bucket", "_count", "_sum"):
                found[name + suffix] = SIDECAR_LABELS
        else:
            found[name] = SIDECAR_LABELS
    return found


def _ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def _texts(dashboard: grafana.Json) -> list[str]:
    """Every text of a dashboard where Grafana substitutes variables."""
    found = [dashboard["title"]]
    for panel in grafana.panels(dashboard):
        found += [panel["title"], panel.get("description", "")]
        for target in panel.get("targets", []):
            found += [target["expr"], target.get("legendFormat", "")]
    for variable in grafana.variables(dashboard):
        found.append(variable.selector)
    return found


def test_the_dashboards_are_there() -> None:
    assert {path.name for path in DASHBOARDS} >= EXPECTED
    uids = [grafana.load(path)["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids)), uids
    titles = [grafana.load(path)["title"] for path in DASHBOARDS]
    assert len(titles) == len(set(titles)), titles


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_dashboard_shape(path: Path) -> None:
    dashboard = grafana.load(path)
    assert re.fullmatch(r"[\w-]{1,40}", dashboard["uid"])
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"].startswith("meshcp / ")
    assert "meshcp" in dashboard["tags"]
    assert dashboard.get("id") is None  # Grafana assigns it on import
    variables = dashboard["templating"]["list"]
    source = variables[0]
    assert (source["name"], source["type"], source["query"]) == ("datasource", "datasource", "prometheus")
    for variable in variables[1:]:
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["refresh"] == 2  # on time range change: values follow the data
        if "instance)" in variable["definition"]:
            # "All" must be the targets listed: `.*` would take every target's process_* series.
            assert "allValue" not in variable, variable["name"]
    ids = [panel["id"] for panel in grafana.panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert [p["gridPos"]["y"] for p in dashboard["panels"]] == sorted(
        p["gridPos"]["y"] for p in dashboard["panels"]
    )
    for panel in grafana.panels(dashboard):
        where = f"{path.name}: {panel['title']}"
        assert panel["type"] in PANEL_TYPES, where
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, where
        if panel["type"] == "row":
            assert "targets" not in panel, where
            continue
        assert panel["description"], where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, where
        targets = panel["targets"]
        assert targets, f"{where} has no targets"
        refs = [target["refId"] for target in targets]
        assert len(refs) == len(set(refs)), where
        for target in targets:
            assert target["expr"].strip(), where
            assert target["datasource"] == panel["datasource"], where


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_every_variable_used_is_defined_before_it_is_used(path: Path) -> None:
    dashboard = grafana.load(path)
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert len(names) == len(set(names))
    defined = set(names) | set(grafana.BUILTINS)
    used: set[str] = set()
    for text in _texts(dashboard):
        used |= grafana.used_variables(text)
    assert used - defined == set(), f"undefined variables in {path.name}"
    assert set(names) - {"datasource"} <= used, "a variable nothing uses"
    seen: set[str] = set()
    for variable in grafana.variables(dashboard):
        assert grafana.used_variables(variable.selector) <= seen, f"{variable.name} uses a later variable"
        seen.add(variable.name)


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_every_metric_and_label_exists(path: Path) -> None:
    dashboard = grafana.load(path)
    known = known_metrics()
    expressions = [(query.name, query.expr, query.legend) for query in grafana.queries(dashboard)]
    expressions += [(f"variable {v.name}", v.selector, "") for v in grafana.variables(dashboard)]
    for where, expr, legend in expressions:
        names = grafana.metric_names(expr)
        assert names, f"{where} names no metric: {expr}"
        unknown = names - known.keys()
        assert unknown == set(), f"{where} names unknown metrics {unknown}"
        labels = set().union(*(known[name] for name in names)) | TARGET_LABELS
        # label_replace makes a label (destination_service from local_service, in the joins).
        if "label_replace" in expr:
            labels |= SIDECAR_LABELS
        assert grafana.label_names(expr) - labels == set(), f"{where} uses unknown labels: {expr}"
        assert grafana.legend_labels(legend) - labels == set(), f"{where}'s legend names unknown labels"
    for variable in grafana.variables(dashboard):
        known_labels = set().union(*(known[name] for name in grafana.metric_names(variable.selector)))
        assert variable.label in known_labels | TARGET_LABELS, variable


def test_sidecar_metrics_are_on_the_keep_list() -> None:
    patterns = bootstrap.stats_config(namespace="n", pod="p", service_account="s").stats_matcher
    assert patterns is not None and patterns.inclusion_list is not None
    for name, stat in SIDECAR_METRICS.items():
        kept = False
        for pattern in patterns.inclusion_list.patterns:
            if pattern.safe_regex is not None and pattern.safe_regex.regex:
                kept |= re.fullmatch(pattern.safe_regex.regex, stat) is not None
            kept |= bool(pattern.exact) and stat == pattern.exact
            kept |= bool(pattern.suffix) and stat.endswith(pattern.suffix or "")
        assert kept, f"{name} ({stat}) is not on the sidecar's keep-list"


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_success_is_not_5xx_and_workloads_are_grouped_as_meshcp_stat_does(path: Path) -> None:
    dashboard = grafana.load(path)
    suffix = DEPLOY_POD.removeprefix("(.+?)")
    for query in grafana.queries(dashboard):
        classes = re.findall(r'envoy_response_code_class\s*(=~|!~|!=|=)\s*"([^"]*)"', query.expr)
        assert all(klass == ("=", "5") for klass in classes), f"{query.name}: success is not 5xx"
        for workload in re.findall(r'source_pod=~"\$(\w+)([^"]*)"', query.expr):
            assert workload[1] == suffix, f"{query.name}: pods of a workload named otherwise than kpi.queries"
    for variable in grafana.variables(dashboard):
        if variable.regex:
            assert variable.regex == f"/^{DEPLOY_POD}$/", variable
            assert variable.values(["bookstore-v1-0", "web-5c7f9d8b6-x2k4z", "bare"]) == [
                "bare",
                "bookstore-v1",
                "web",
            ]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=_ids(DASHBOARDS))
def test_prometheus_parses_every_expression(path: Path, tmp_path: Path) -> None:
    """Every expression, with its variables given a value, through promtool's rule check
    (which parses each rule's expression with Prometheus' own parser)."""
    promtool = _promtool()
    dashboard = grafana.load(path)
    values = {variable.name: "x" for variable in grafana.variables(dashboard)}
    rules = [
        {"record": f"meshcp:test_{index}", "expr": grafana.substitute(query.expr, values)}
        for index, query in enumerate(grafana.queries(dashboard))
    ]
    rules += [
        {"record": f"meshcp:variable_{v.name}", "expr": grafana.substitute(v.selector, values)}
        for v in grafana.variables(dashboard)
    ]
    file = tmp_path / "rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
