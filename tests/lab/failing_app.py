"""An app that fails on purpose, for the lab tests of golden metrics: 500 on /fail, 200
otherwise (`FAILING_APP`, run as `apps/flaky.py` or under any name), and the manifests of a
permissive namespace `flaky` running it (`FLAKY_MANIFESTS`), so that any mesh identity may
call it and every 5xx comes from the app, not from policy."""

from __future__ import annotations

#: A server that fails on purpose (500 on /fail), in a permissive namespace so that any
#: mesh identity may call it.
FLAKY_MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata:
  name: flaky
  labels:
    meshcp.dev/monitored-by: meshcp
  annotations:
    meshcp.dev/permissive: "true"
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: flaky
  namespace: flaky
---
apiVersion: v1
kind: Service
metadata:
  name: flaky
  namespace: flaky
spec:
  selector:
    app: flaky
  ports:
  - name: http
    port: 8080
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: flaky-0
  namespace: flaky
  labels:
    app: flaky
spec:
  serviceAccountName: flaky
  containers:
  - name: flaky
    command: ["python3", "apps/flaky.py"]
    ports:
    - name: http
      containerPort: 8080
    readinessProbe:
      tcpSocket:
        port: 8080
"""
FAILING_APP = """\
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b'{"plaintext": true}'
        self.send_response(500 if self.path == "/fail" else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
