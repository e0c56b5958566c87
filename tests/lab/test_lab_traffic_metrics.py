"""The SMI TrafficMetrics API in a real lab: Envoy sidecars, the lab's Prometheus, and the
controller's HTTP endpoint inside the lab's node namespace, read as an aggregated API
server's client would.

A quiet client (`egress-client-0`, which runs no traffic of its own) sends a known number
of requests: allowed GETs (200) and POSTs the policy refuses (403) to the bookstore, and
GETs (200, and 500 on /fail) and refused POSTs (403) to a server that fails on purpose, in
a namespace of its own which nobody else calls. The client's edges and that server's
received traffic are then exact: 403 counts as success, 5xx as failure, at both sides.
The tests share one lab and run in file order; the last one takes the lab down. Run it
alone, under the machine's lab lock:
`flock /tmp/meshcp-lab.lock pytest tests/lab/test_lab_traffic_metrics.py`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from meshcp.lab import layout, netns_http
from meshcp.lab.network import LabError
from meshcp.sidecar import ports
from tests.lab.driver import LabDriver, bookstore_lab, lab_leftovers, wait_for
from tests.lab.failing_app import FAILING_APP

API = "/apis/metrics.smi-spec.io/v1alpha1"
#: Longer than the lab has run: every counter was born inside it, so counts are totals.
WINDOW = "1h"
BOOKSTORE = "http://bookstore.bookstore:14001"
FAILING = "http://failing.failing:8080"
CLIENT = "bookbuyer/egress-client-0"
BUYER_HEADERS = ("client-app=bookbuyer", "user-agent=Go-http-client/1.1")
ALLOWED, REFUSED = 8, 4
FAILED, SERVED, DENIED = 3, 5, 2
#: Prometheus scrapes every 2 s; its first scrapes wait for it to start and for file_sd.
SCRAPE_DEADLINE = 60.0
#: A server answering 500 on /fail and 200 elsewhere, in a namespace of its own that only
#: this test's client calls; the client may GET, and its POSTs are refused by policy (403).
FAILING_MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata:
  name: failing
  labels:
    meshcp.dev/monitored-by: meshcp
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: failing
  namespace: failing
---
apiVersion: v1
kind: Service
metadata:
  name: failing
  namespace: failing
spec:
  selector:
    app: failing
  ports:
  - name: http
    port: 8080
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: failing-0
  namespace: failing
  labels:
    app: failing
spec:
  serviceAccountName: failing
  containers:
  - name: failing
    command: ["python3", "apps/failing.py"]
    ports:
    - name: http
      containerPort: 8080
    readinessProbe:
      tcpSocket:
        port: 8080
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: failing-routes
  namespace: failing
spec:
  matches:
  - name: get
    pathRegex: "/.*"
    methods:
    - GET
---
# bookbuyer may GET, nothing else: its POSTs are refused (403) by failing's sidecar.
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata:
  name: bookbuyer-access-failing
  namespace: failing
spec:
  destination:
    kind: ServiceAccount
    name: failing
    namespace: failing
  rules:
  - kind: HTTPRouteGroup
    name: failing-routes
  sources:
  - kind: ServiceAccount
    name: bookbuyer
    namespace: bookbuyer
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    yield from bookstore_lab(
        tmp_path_factory.mktemp("bookstore"),
        prometheus=True,
        extra={"failing.yaml": FAILING_MANIFESTS, "apps/failing.py": FAILING_APP},
    )


def api(path: str, **query: str) -> tuple[int, Any]:
    """GET the API at the controller's HTTP address in the lab's node namespace."""
    asked = "&".join(f"{key}={value}" for key, value in {"window": WINDOW, **query}.items())
    status, body = asyncio.run(
        netns_http.get(layout.NODE_NETNS, ports.CONTROLLER_HTTP_PORT, f"{API}{path}?{asked}")
    )
    return status, json.loads(body)


def _found(path: str) -> Any:
    """The answer, or None while Prometheus has no series of the resource yet (404)."""
    try:
        status, body = api(path)
    except LabError:
        return None
    if status == 404:
        return None
    assert status == 200, body
    return body


def _counts(item: dict[str, Any]) -> tuple[int, int]:
    values = {metric["name"]: metric["value"] for metric in item["metrics"]}
    return int(values["success_count"]), int(values["failure_count"])


def _latency(item: dict[str, Any]) -> str | None:
    value: str | None = item["metrics"][2]["value"]  # p50
    return value


def _edges_to(body: Any) -> dict[str, dict[str, Any]]:
    """The client's `to` edges by Service name."""
    items = body["items"] if body else []
    return {item["edge"]["resource"]["name"]: item for item in items if item["edge"]["direction"] == "to"}


def _wait_for_counts(path: str, counts: tuple[int, int]) -> None:
    seen: list[object] = []

    def counted() -> bool:
        body = _found(path)
        seen[:] = [body]
        return body is not None and _counts(body) == counts

    try:
        wait_for(counted, SCRAPE_DEADLINE, f"{counts} (success, failure) at {path}")
    except AssertionError as error:
        raise AssertionError(f"{error}; the last answer: {seen}") from None


def test_a_clients_edges_count_its_requests(lab: LabDriver) -> None:
    allowed = lab.http(CLIENT, f"{BOOKSTORE}/books-bought", count=ALLOWED, headers=BUYER_HEADERS)
    assert allowed["statuses"] == {"200": ALLOWED}, allowed
    refused = lab.http(
        CLIENT, f"{BOOKSTORE}/update-books-bought", count=REFUSED, method="POST", headers=BUYER_HEADERS
    )
    assert refused["statuses"] == {"403": REFUSED}, refused
    failed = lab.http(CLIENT, f"{FAILING}/fail", count=FAILED)
    assert failed["statuses"] == {"500": FAILED}, failed
    served = lab.http(CLIENT, f"{FAILING}/ok", count=SERVED)
    assert served["statuses"] == {"200": SERVED}, served
    denied = lab.http(CLIENT, f"{FAILING}/ok", count=DENIED, method="POST")
    assert denied["statuses"] == {"403": DENIED}, denied
    path = "/namespaces/bookbuyer/pods/egress-client-0/edges"
    seen: list[object] = []

    def counted() -> bool:
        edges = _edges_to(_found(path))
        seen[:] = [edges]
        leaves = [edges[name] for name in ("bookstore-v1", "bookstore-v2") if name in edges]
        failing = edges.get("failing")
        return (
            failing is not None
            and _counts(failing) == (SERVED + DENIED, FAILED)
            # Envoy flushes histograms (latency) on its stats flush, after the counters.
            and _latency(failing) is not None
            and sum(_counts(leaf)[0] for leaf in leaves) == ALLOWED + REFUSED
        )

    try:
        wait_for(counted, SCRAPE_DEADLINE, "egress-client's requests in the TrafficMetrics API")
    except AssertionError as error:
        raise AssertionError(f"{error}; the last edges read: {seen}") from None
    edges = _edges_to(_found(path))
    # Every request to the bookstore went to a backend of its TrafficSplit; the 403s are
    # answers the mesh meant to give, not failures.
    assert set(edges) <= {"failing", "bookstore-v1", "bookstore-v2"}, edges
    assert all(_counts(edges[name])[1] == 0 for name in edges if name != "failing")
    failing = edges["failing"]
    assert failing["edge"] == {
        "direction": "to",
        "side": "client",
        "resource": {"kind": "Service", "namespace": "failing", "name": "failing"},
    }
    assert failing["resource"] == {"kind": "Pod", "namespace": "bookbuyer", "name": "egress-client-0"}


def test_a_server_counts_what_it_received(lab: LabDriver) -> None:
    for path in (
        "/namespaces/failing/pods/failing-0",
        "/namespaces/failing/deployments/failing",
        "/namespaces/failing",
    ):
        _wait_for_counts(path, (SERVED + DENIED, FAILED))
    pod = _found("/namespaces/failing/pods/failing-0")
    assert pod["edge"] == {"direction": "from", "side": "server", "resource": {}}

    def timed() -> bool:
        # Envoy merges latency histograms on its stats flush, after the counters.
        return _latency(_found("/namespaces/failing/pods/failing-0")) is not None

    wait_for(timed, SCRAPE_DEADLINE, "the server's latency of failing-0")
    callers = _found("/namespaces/failing/pods/failing-0/edges")
    assert [(item["edge"], _counts(item)) for item in callers["items"]] == [
        (
            {
                "direction": "from",
                "side": "client",
                "resource": {"kind": "Pod", "namespace": "bookbuyer", "name": "egress-client-0"},
            },
            (SERVED + DENIED, FAILED),
        )
    ]


def test_lists_and_errors(lab: LabDriver) -> None:
    status, pods = api("/namespaces/failing/pods")
    assert status == 200, pods
    assert [item["resource"]["name"] for item in pods["items"]] == ["failing-0"]
    status, namespaces = api("/namespaces")
    assert status == 200, namespaces
    assert {"bookbuyer", "bookstore", "failing"} <= {item["resource"]["name"] for item in namespaces["items"]}
    status, split = api("/namespaces/bookstore/trafficsplits/bookstore-split")
    assert status == 200, split
    assert [item["backend"]["name"] for item in split["items"]] == ["bookstore-v1", "bookstore-v2"]
    status, missing = api("/namespaces/failing/pods/nope")
    assert (status, missing["kind"], missing["reason"]) == (404, "Status", "NotFound")
    status, bad = api("/namespaces/failing/pods", window="5x")
    assert (status, bad["reason"]) == (400, "BadRequest")
    assert bad["message"].startswith("bad window '5x'")


def test_down_removes_the_lab(lab: LabDriver) -> None:
    lab.down()
    assert lab_leftovers() == []
