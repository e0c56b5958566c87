"""OSM's Retry and UpstreamTrafficSetting in a real lab: network namespaces, iptables
interception, Envoy sidecars over mTLS, the policies as OSM's users write them.

Two services of one app that answers 503 to the first two requests of each path and counts
every attempt: `shaky`, which bookbuyer retries (a Retry) and bookthief does not, and
`limited`, which rate limits its callers (an UpstreamTrafficSetting). Each has its own
service, so the retries' attempts spend no tokens of the limits. The namespace is
permissive: what answers is the policy under test, not TrafficTargets.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.lab.driver import LabDriver, bookstore_lab

BUYER = "bookbuyer/bookbuyer-0"
THIEF = "bookthief/bookthief-0"
SHAKY = "http://shaky.osm:8080"
LIMITED = "http://limited.osm:8080"

APP = """\
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

attempts = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/attempts/"):
            with lock:
                count = attempts.get(self.path.removeprefix("/attempts"), 0)
            self._answer(200, {"plaintext": True, "attempts": count})
            return
        with lock:
            count = attempts[self.path] = attempts.get(self.path, 0) + 1
        if self.path.startswith("/fail-twice/") and count <= 2:
            self._answer(503, {"attempt": count})
        else:
            self._answer(200, {"plaintext": True, "attempt": count})

    def _answer(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def _workload(name: str) -> str:
    return f"""\
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: osm}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: osm}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-0, namespace: osm, labels: {{app: {name}}}}}
spec:
  serviceAccountName: {name}
  containers:
  - name: app
    command: ["python3", "apps/osm_app.py"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}}}
"""


MANIFESTS = (
    """\
apiVersion: v1
kind: Namespace
metadata:
  name: osm
  labels: {meshcp.dev/monitored-by: meshcp}
  annotations: {meshcp.dev/permissive: "true"}
"""
    + _workload("shaky")
    + _workload("limited")
    + """\
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Retry
metadata: {name: retry, namespace: bookbuyer}
spec:
  source: {kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}
  destinations: [{kind: Service, name: shaky, namespace: osm}]
  retryPolicy: {retryOn: 5xx, perTryTimeout: 2s, numRetries: 3, retryBackoffBaseInterval: 10ms}
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: UpstreamTrafficSetting
metadata: {name: limited, namespace: osm}
spec:
  host: limited.osm.svc.cluster.local
  rateLimit:
    local:
      http: {requests: 3, unit: hour}
  httpRoutes:
  - path: /special/.*
    rateLimit:
      local:
        requests: 1
        unit: hour
        responseStatusCode: 503
        responseHeadersToAdd: [{name: x-rate-limited, value: "yes"}]
"""
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    yield from bookstore_lab(
        tmp_path_factory.mktemp("bookstore"), extra={"osm.yaml": MANIFESTS, "apps/osm_app.py": APP}
    )


def _attempts(lab: LabDriver, service: str, path: str) -> int:
    """What the app of `service` counted for `path`, asked in its own pod on loopback (not
    intercepted: the question spends no token and is no attempt)."""
    url = f"http://127.0.0.1:8080/attempts{path}"
    script = f"import json, urllib.request as u; print(json.dumps(json.load(u.urlopen({url!r}, timeout=5))))"
    found = lab.exec_json(f"osm/{service}-0", sys.executable, "-c", script)
    count = found["attempts"]
    assert isinstance(count, int)
    return count


def test_the_policies_are_accepted(lab: LabDriver) -> None:
    status = lab.status()
    assert status["problems"] == [], json.dumps(status["problems"])


def test_bookbuyer_retries_two_503s_into_a_success_and_the_app_counts_three_attempts(lab: LabDriver) -> None:
    result = lab.http(BUYER, f"{SHAKY}/fail-twice/buyer")
    assert result["statuses"] == {"200": 1}, result
    assert _attempts(lab, "shaky", "/fail-twice/buyer") == 3


def test_bookthief_without_a_retry_sees_the_503(lab: LabDriver) -> None:
    result = lab.http(THIEF, f"{SHAKY}/fail-twice/thief")
    assert result["statuses"] == {"503": 1}, result
    assert _attempts(lab, "shaky", "/fail-twice/thief") == 1


def test_a_rate_above_the_limit_gets_the_configured_status(lab: LabDriver) -> None:
    # Three requests an hour to the service; the fourth and fifth get OSM's default 429.
    result = lab.http(BUYER, f"{LIMITED}/books", count=5)
    assert result["statuses"] == {"200": 3, "429": 2}, result
    # A route of its own: one request an hour, then its own status.
    special = lab.http(THIEF, f"{LIMITED}/special/offer", count=2)
    assert special["statuses"] == {"200": 1, "503": 1}, special
    # What was limited never reached the app.
    assert _attempts(lab, "limited", "/books") == 3
    assert _attempts(lab, "limited", "/special/offer") == 1
