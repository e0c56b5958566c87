"""Prometheus in a real lab: it scrapes every sidecar's Prometheus listener and the
controller's /metrics, follows `lab apply`, is restarted when it exits, and `lab down`
removes it with its storage. Queried through its HTTP API in the node namespace.

The tests share one lab and run in file order; the last one takes the lab down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from meshcp.lab import layout
from meshcp.lab.layout import LabPaths
from meshcp.lab.netns_http import get
from meshcp.lab.network import LabError
from meshcp.lab.plan import CONTROLLER_JOB, SIDECAR_JOB
from meshcp.lab.processes import running
from tests.lab.driver import (
    LabDriver,
    bookstore_lab,
    lab_leftovers,
    wait_for,
)

BOOKSTORE = "http://bookstore.bookstore:14001"
BUYER = "bookbuyer/bookbuyer-0"
BUYER_HEADERS = ("client-app=bookbuyer", "user-agent=Go-http-client/1.1")
#: Prometheus scrapes every 2 s; its first scrapes wait for it to start and for file_sd.
SCRAPE_DEADLINE = 30.0
EXTRA_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: mysql-1
  namespace: bookwarehouse
  labels:
    app: mysql
spec:
  serviceAccountName: mysql
  containers:
  - name: mysql
    command: ["python3", "apps/echo.py", "--port", "3306"]
    readinessProbe:
      tcpSocket:
        port: 3306
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    yield from bookstore_lab(tmp_path_factory.mktemp("bookstore"), prometheus=True)


def _api(path: str, **query: str) -> Any:
    """GET Prometheus's HTTP API in the node namespace; its `data`, or None while it
    does not answer yet."""
    if query:
        path += "?" + urllib.parse.urlencode(query)
    try:
        status, body = asyncio.run(
            get(layout.NODE_NETNS, layout.PROMETHEUS_PORT, path, layout.PROMETHEUS_HOST)
        )
    except LabError:
        return None
    if status != 200:
        return None
    answer: dict[str, Any] = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


def _meshed(lab: LabDriver) -> set[str]:
    return {f"{p['namespace']}/{p['name']}" for p in lab.status()["pods"] if p["meshed"]}


def _up_series() -> dict[tuple[str, str], float] | None:
    """`up` per (job, namespace/pod) ("" for the controller)."""
    data = _api("/api/v1/query", query="up")
    if data is None:
        return None
    found = {}
    for series in data["result"]:
        labels = series["metric"]
        pod = f"{labels['namespace']}/{labels['pod']}" if "pod" in labels else ""
        found[(labels["job"], pod)] = float(series["value"][1])
    return found


def _expected_up(meshed: set[str]) -> dict[tuple[str, str], float]:
    return {(CONTROLLER_JOB, ""): 1.0, **{(SIDECAR_JOB, key): 1.0 for key in meshed}}


def test_status_gives_prometheus_url_in_the_node_namespace(lab: LabDriver) -> None:
    prometheus = lab.status()["prometheus"]
    assert prometheus["url"] == f"http://{layout.PROMETHEUS_HOST}:{layout.PROMETHEUS_PORT}"
    assert prometheus["netns"] == layout.NODE_NETNS
    assert prometheus["running"] is True
    wait_for(lambda: lab.status()["prometheus"]["ready"], SCRAPE_DEADLINE, "Prometheus ready")
    text = lab.meshcp("lab", "status").stdout
    assert f"prometheus: ready at {prometheus['url']} in netns {layout.NODE_NETNS}" in text, text
    assert f"ip netns exec {layout.NODE_NETNS} curl" in text, text


def test_every_sidecar_and_the_controller_is_a_target_and_up(lab: LabDriver) -> None:
    meshed = _meshed(lab)
    assert len(meshed) >= 5

    def all_up() -> bool:
        data = _api("/api/v1/targets")
        if data is None:
            return False
        targets = data["activeTargets"]
        return len(targets) == len(meshed) + 1 and all(t["health"] == "up" for t in targets)

    wait_for(all_up, SCRAPE_DEADLINE, "every target up")
    targets = _api("/api/v1/targets")["activeTargets"]
    sidecars = {t["scrapeUrl"] for t in targets if t["labels"]["job"] == SIDECAR_JOB}
    pods = {p["ip"] for p in lab.status()["pods"] if p["meshed"]}
    assert sidecars == {f"http://{ip}:15010/stats/prometheus" for ip in pods}
    controller = [t["scrapeUrl"] for t in targets if t["labels"]["job"] == CONTROLLER_JOB]
    assert controller == ["http://127.0.0.1:9091/metrics"]
    # One `up` series per sidecar and one for the controller, all 1.
    wait_for(lambda: _up_series() == _expected_up(meshed), SCRAPE_DEADLINE, "up per sidecar and controller")


def test_envoy_and_controller_metrics_have_data_after_traffic(lab: LabDriver) -> None:
    result = lab.http(BUYER, f"{BOOKSTORE}/books-bought", count=5, headers=BUYER_HEADERS)
    assert result["statuses"] == {"200": 5}, result
    query = 'sum(envoy_cluster_upstream_rq_total{namespace="bookbuyer",pod="bookbuyer-0"})'

    def requests_seen() -> bool:
        data = _api("/api/v1/query", query=query)
        return bool(data and data["result"] and float(data["result"][0]["value"][1]) >= 5)

    wait_for(requests_seen, SCRAPE_DEADLINE, "bookbuyer's upstream requests in Prometheus")
    scraped = _api("/api/v1/query", query=f'scrape_samples_scraped{{job="{CONTROLLER_JOB}"}}')
    assert scraped["result"] and float(scraped["result"][0]["value"][1]) > 0


def test_apply_adds_and_removes_scrape_targets(lab: LabDriver) -> None:
    extra = lab.directory / "extra-pod.yaml"
    extra.write_text(EXTRA_POD)
    try:
        lab.apply()
        meshed = _meshed(lab)
        assert "bookwarehouse/mysql-1" in meshed
        wait_for(lambda: _up_series() == _expected_up(meshed), SCRAPE_DEADLINE, "the new pod scraped")
    finally:
        extra.unlink()
        lab.apply()
    meshed = _meshed(lab)
    assert "bookwarehouse/mysql-1" not in meshed

    def dropped() -> bool:
        data = _api("/api/v1/targets")
        return data is not None and all(t["labels"].get("pod") != "mysql-1" for t in data["activeTargets"])

    wait_for(dropped, SCRAPE_DEADLINE, "the removed pod no longer a target")


def test_prometheus_is_restarted_when_it_exits(lab: LabDriver) -> None:
    before = lab.status()["prometheus"]
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> bool:
        now = lab.status()["prometheus"]
        return bool(now["restarts"] > before["restarts"] and now["running"] and now["ready"])

    wait_for(restarted, SCRAPE_DEADLINE, "Prometheus restarted and ready")
    assert lab.status()["prometheus"]["pid"] != before["pid"]


def test_down_stops_prometheus_and_removes_its_storage(lab: LabDriver) -> None:
    storage = LabPaths.default().prometheus / "data"
    assert storage.is_dir()
    pid = lab.status()["prometheus"]["pid"]
    lab.down()
    assert not running(pid)
    assert not storage.exists()
    assert lab_leftovers() == []
