"""OSM's Retry, UpstreamTrafficSetting and Egress in a real lab: network namespaces,
iptables interception, Envoy sidecars over mTLS, the policies as OSM's users write them.

Services of one app that counts every attempt and answers 503 to the first two requests
of each `/fail-twice/` path (or, started `broken`, to everything): `shaky`, which bookbuyer
retries (a Retry) and bookthief does not; `limited`, which rate limits its callers; and
`fragile`, a healthy pod and a broken one, whose callers eject the broken one (both
UpstreamTrafficSettings). Each has its own service, so the retries' attempts spend no
tokens of the limits. The namespace is permissive: what answers is the policy under test,
not TrafficTargets. `narrow` limits its callers' connections: three requests at once
from one client overflow. Envoy's overflow counters are outside the sidecars' stats
keep-list, so tests/test_envoy_osm_policies.py reads them on loopback.

Egress: two hosts outside the mesh (`internet`, an unmonitored namespace: no sidecar, no
Service, fixed addresses on the lab bridge) serve HTTP, HTTPS with a certificate of their
own (not the mesh's) and raw TCP. bookbuyer's Egresses allow one HTTP host, one SNI and
one address's TCP port; egress passthrough is off (the bookstore's MeshConfig), so the
rest is refused, and bookthief, with no Egress, reaches none of it.

IngressBackend: an ingress outside the mesh (`edge`, an unmonitored namespace: its pods
have no sidecar) runs a small HTTP proxy, `edge-0` behind the Service `edge`, in front of
`front`, whose IngressBackend admits that Service's endpoints. `stranger-0`, another pod
of the namespace outside the Service, is refused by `front`'s sidecar (403), and the
ingress reaches no backend without an IngressBackend (`shaky`): its connection is closed.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Iterator

import pytest

from tests.lab.driver import LabDriver, bookstore_lab
from tests.support.outside_tls import self_signed

BUYER = "bookbuyer/bookbuyer-0"
THIEF = "bookthief/bookthief-0"
SHAKY = "http://shaky.osm:8080"
LIMITED = "http://limited.osm:8080"
FRAGILE = "http://fragile.osm:8080"

APP = """\
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

broken = sys.argv[1:] == ["broken"]  # answers 503 to everything but /attempts/
attempts = {}
lock = threading.Lock()
released = threading.Event()  # /hold/ requests wait for a GET /release


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/attempts/"):
            with lock:
                count = attempts.get(self.path.removeprefix("/attempts"), 0)
            self._answer(200, {"plaintext": True, "attempts": count})
            return
        if self.path == "/release":
            released.set()
            self._answer(200, {"plaintext": True})
            return
        with lock:
            count = attempts[self.path] = attempts.get(self.path, 0) + 1
        if self.path.startswith("/hold/"):
            released.wait(60)
        if broken or (self.path.startswith("/fail-twice/") and count <= 2):
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


# 8081: the same app on a second port (narrow's control port: a cluster of its own).
threading.Thread(target=ThreadingHTTPServer(("0.0.0.0", 8081), Handler).serve_forever, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def _workload(name: str, *broken: str, control: bool = False) -> str:
    """A ServiceAccount, a Service and its pod `<name>-0`, plus a pod of each name in
    `broken` behind the same service, answering 503 to everything. `control`: the service
    also has the app's second port, 8081."""
    control_port = ", {name: control, port: 8081, targetPort: 8081}" if control else ""
    pods = "".join(
        f"""\
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: osm, labels: {{app: {name}}}}}
spec:
  serviceAccountName: {name}
  containers:
  - name: app
    command: ["python3", "apps/osm_app.py", "broken"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}}}
"""
        for pod in broken
    )
    return (
        pods
        + f"""\
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
  ports: [{{name: http, port: 8080, targetPort: 8080}}{control_port}]
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
    )


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
    + _workload("fragile", "fragile-broken")
    + _workload("narrow", control=True)
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
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: UpstreamTrafficSetting
metadata: {name: fragile, namespace: osm}
spec:
  host: fragile
  outlierDetection: {consecutive5xx: 2, interval: 10s, baseEjectionTime: 10m, maxEjectionPercent: 50}
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: UpstreamTrafficSetting
metadata: {name: narrow, namespace: osm}
spec:
  host: narrow.osm.svc.cluster.local
  connectionSettings:
    tcp: {maxConnections: 1}
    http: {maxPendingRequests: 1}
"""
)


#: The outside hosts: EXAMPLE is allowed (HTTP as web.example, HTTPS as secure.example,
#: TCP on 5432), ELSEWHERE serves the same and is allowed nothing by address.
EXAMPLE, ELSEWHERE = "10.244.9.20", "10.244.9.21"
OUTSIDE_APP = """\
import json
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Web(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"plaintext": True, "host": self.headers.get("host")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class TlsEcho(Server):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("apps/outside.crt", "apps/outside.key")

    def get_request(self):
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), address


servers = [Server(("0.0.0.0", 5432), Echo), Server(("0.0.0.0", 6000), Echo), TlsEcho(("0.0.0.0", 443), Echo)]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 80), Web).serve_forever()
"""


def _outside_pod(name: str, address: str) -> str:
    return f"""\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: internet}}
spec:
  containers:
  - name: web
    command: ["python3", "apps/outside.py"]
    readinessProbe: {{tcpSocket: {{port: 80}}}}
status: {{podIP: {address}}}
"""


EGRESS = (
    """\
apiVersion: v1
kind: Namespace
metadata: {name: internet}
"""
    + _outside_pod("example", EXAMPLE)
    + _outside_pod("elsewhere", ELSEWHERE)
    + f"""\
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {{name: web-example, namespace: bookbuyer}}
spec:
  sources: [{{kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}}]
  hosts: [web.example]
  ports: [{{number: 80, protocol: http}}]
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {{name: secure-example, namespace: bookbuyer}}
spec:
  sources: [{{kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}}]
  hosts: [secure.example]
  ports: [{{number: 443, protocol: https}}]
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {{name: database, namespace: bookbuyer}}
spec:
  sources: [{{kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}}]
  ipAddresses: [{EXAMPLE}/32]
  ports: [{{number: 5432, protocol: tcp}}]
"""
)


#: The ingress's proxy: GET /<service>/<path> is forwarded to http://<service>.osm:8080/<path>;
#: the backend's status and body come back, or 502 and the error when it closed the connection.
EDGE_APP = """\
import json
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        service, _, rest = self.path.lstrip("/").partition("/")
        try:
            with urllib.request.urlopen(f"http://{service}.osm:8080/{rest}", timeout=5) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        except OSError as error:
            status, body = 502, json.dumps({"error": type(error).__name__}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("0.0.0.0", 80), Proxy).serve_forever()
"""


def _edge_pod(name: str, app: str) -> str:
    return f"""\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: edge, labels: {{app: {app}}}}}
spec:
  containers:
  - name: proxy
    command: ["python3", "apps/edge.py"]
    readinessProbe: {{tcpSocket: {{port: 80}}}}
"""


INGRESS = (
    """\
apiVersion: v1
kind: Namespace
metadata: {name: edge}
---
apiVersion: v1
kind: Service
metadata: {name: edge, namespace: edge}
spec:
  selector: {app: edge}
  ports: [{name: http, port: 80, targetPort: 80}]
"""
    + _edge_pod("edge-0", "edge")
    + _edge_pod("stranger-0", "stranger")
    + _workload("front")
    + """\
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: IngressBackend
metadata: {name: front, namespace: osm}
spec:
  backends: [{name: front, port: {number: 8080, protocol: http}}]
  sources: [{kind: Service, name: edge, namespace: edge}]
"""
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    cert, key = self_signed("secure.example", datetime.timedelta(days=1))
    extra = {
        "osm.yaml": MANIFESTS,
        "apps/osm_app.py": APP,
        "egress.yaml": EGRESS,
        "apps/outside.py": OUTSIDE_APP,
        "apps/outside.crt": cert,
        "apps/outside.key": key,
        "ingress.yaml": INGRESS,
        "apps/edge.py": EDGE_APP,
    }
    yield from bookstore_lab(tmp_path_factory.mktemp("bookstore"), extra=extra)


#: Run in bookbuyer: six requests at once to narrow's /hold/x, held by the app until the
#: first answer (an overflow) has come back and the script has released them through
#: the control port (a cluster of its own, with its own limits); the statuses, and whether
#: each 503 was Envoy's overflow (`x-envoy-overloaded`).
CONCURRENT = """\
import json, threading, urllib.error, urllib.request
found = []
answered = threading.Event()
def one():
    try:
        with urllib.request.urlopen("http://narrow.osm:8080/hold/x", timeout=60) as response:
            found.append(str(response.status))
    except urllib.error.HTTPError as error:
        found.append(f"{error.code} overloaded={error.headers.get('x-envoy-overloaded')}")
    answered.set()
threads = [threading.Thread(target=one) for _ in range(6)]
for thread in threads:
    thread.start()
answered.wait(30)
urllib.request.urlopen("http://narrow.osm:8081/release", timeout=10).read()
for thread in threads:
    thread.join()
print(json.dumps({"statuses": sorted(found)}))
"""


def _attempts(lab: LabDriver, service: str, path: str, pod: str = "") -> int:
    """What the app of `service` (in `pod`, default `<service>-0`) counted for `path`,
    asked in its own pod on loopback (not intercepted: the question spends no token and
    is no attempt)."""
    url = f"http://127.0.0.1:8080/attempts{path}"
    script = f"import json, urllib.request as u; print(json.dumps(json.load(u.urlopen({url!r}, timeout=5))))"
    found = lab.exec_json(f"osm/{pod or service + '-0'}", sys.executable, "-c", script)
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


def test_an_endpoint_that_keeps_failing_is_ejected_and_traffic_moves_to_the_healthy_one(
    lab: LabDriver,
) -> None:
    # Round robin over the two pods: the broken one answers 503 until its second 503 in a
    # row ejects it; from then on every request goes to the healthy pod.
    first = lab.http(BUYER, f"{FRAGILE}/books", count=10)
    assert set(first["statuses"]) <= {"200", "503"} and first["statuses"].get("503", 0) >= 2, first
    assert _attempts(lab, "fragile", "/books", "fragile-broken") == first["statuses"]["503"]
    after = lab.http(BUYER, f"{FRAGILE}/after", count=10)
    assert after["statuses"] == {"200": 10}, after
    assert _attempts(lab, "fragile", "/after", "fragile-broken") == 0
    assert _attempts(lab, "fragile", "/after") == 10


def test_concurrency_above_the_connection_limits_overflows_with_503(lab: LabDriver) -> None:
    """maxConnections 1 and maxPendingRequests 1, six requests at once: the client's
    sidecar refuses those over the limits with 503 at once, and the others reach the app
    once it lets them go. Envoy lets each of its worker threads open one connection even
    with the limit reached (the lab's sidecars run one per core), so how many pass depends
    on the workers the requests land on; at most one per worker plus the pending one."""
    result = lab.exec_json(BUYER, sys.executable, "-c", CONCURRENT)
    statuses = result["statuses"]
    assert set(statuses) == {"200", "503 overloaded=true"}, result
    served = statuses.count("200")
    assert served <= (os.cpu_count() or 1) + 1, result
    assert _attempts(lab, "narrow", "/hold/x") == served  # the refused never reached the app


#: Run in a pod (address, SNI, the certificate's file): one TLS connection to address:443
#: with that SNI, trusting only the outside host's own certificate; what it echoed, or
#: the error.
TLS = """\
import json, socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[3])
context.check_hostname = False  # the SNI under test may be another name than the certificate's
try:
    with socket.create_connection((sys.argv[1], 443), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=sys.argv[2]) as tls:
            tls.sendall(b"hello\\n")
            print(json.dumps({"echoed": tls.recv(100).decode(), "error": None}))
except (OSError, ssl.SSLError) as error:
    print(json.dumps({"echoed": "", "error": type(error).__name__}))
"""


def test_egress_http_reaches_the_allowed_host_and_others_get_403(lab: LabDriver) -> None:
    allowed = lab.http(BUYER, f"http://{EXAMPLE}/", headers=("Host=web.example",), count=2)
    assert allowed["statuses"] == {"200": 2}, allowed
    other = lab.http(BUYER, f"http://{EXAMPLE}/", headers=("Host=evil.example",))
    assert other["statuses"] == {"403": 1}, other
    # bookthief has no Egress: nothing outside the mesh, closed rather than answered
    thief = lab.http(THIEF, f"http://{EXAMPLE}/", headers=("Host=web.example",))
    assert "200" not in thief["statuses"] and "403" not in thief["statuses"], thief


def test_egress_tcp_reaches_the_allowed_address_and_port_only(lab: LabDriver) -> None:
    assert lab.tcp(BUYER, EXAMPLE, 5432) == {"echoed": True, "error": None}
    assert lab.tcp(BUYER, ELSEWHERE, 5432)["echoed"] is False  # another address
    assert lab.tcp(BUYER, EXAMPLE, 6000)["echoed"] is False  # a port no Egress names
    assert lab.tcp(THIEF, EXAMPLE, 5432)["echoed"] is False


def test_egress_https_reaches_the_allowed_sni_with_the_host_own_certificate(lab: LabDriver) -> None:
    cert = str(lab.directory / "apps" / "outside.crt")
    allowed = lab.exec_json(BUYER, sys.executable, "-c", TLS, EXAMPLE, "secure.example", cert)
    assert allowed == {"echoed": "hello\n", "error": None}
    other = lab.exec_json(BUYER, sys.executable, "-c", TLS, EXAMPLE, "other.example", cert)
    assert other["echoed"] == "" and other["error"] is not None, other
    thief = lab.exec_json(THIEF, sys.executable, "-c", TLS, EXAMPLE, "secure.example", cert)
    assert thief["echoed"] == "", thief


EDGE, STRANGER, FRONT = "edge/edge-0", "edge/stranger-0", "http://front.osm:8080"


def test_ingress_the_ingress_backend_admits_reaches_the_backend(lab: LabDriver) -> None:
    direct = lab.http(EDGE, f"{FRONT}/direct", count=2)
    assert direct["statuses"] == {"200": 2}, direct
    # in front of it: another unmeshed client through the ingress's proxy
    proxied = lab.http(STRANGER, "http://edge.edge/front/proxied")
    assert proxied["statuses"] == {"200": 1}, proxied
    assert _attempts(lab, "front", "/direct") == 2
    assert _attempts(lab, "front", "/proxied") == 1
    # mesh clients keep reaching the same port over mTLS
    meshed = lab.http(BUYER, f"{FRONT}/meshed")
    assert meshed["statuses"] == {"200": 1}, meshed


def test_ingress_refuses_other_unmeshed_clients_and_backends_without_an_ingress_backend(
    lab: LabDriver,
) -> None:
    stranger = lab.http(STRANGER, f"{FRONT}/stranger")
    assert stranger["statuses"] == {"403": 1}, stranger
    assert _attempts(lab, "front", "/stranger") == 0
    # shaky has no IngressBackend: the ingress's connection is closed, by its proxy too
    closed = lab.http(EDGE, f"{SHAKY}/no-ingress")
    assert "200" not in closed["statuses"] and "403" not in closed["statuses"], closed
    proxied = lab.http(STRANGER, "http://edge.edge/shaky/no-ingress")
    assert proxied["statuses"] == {"502": 1}, proxied
    assert _attempts(lab, "shaky", "/no-ingress") == 0
