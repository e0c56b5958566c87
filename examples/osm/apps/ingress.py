"""An ingress controller for `meshcp lab`, outside the mesh (no sidecar): every request is
sent on, path and all, to one backend, and the backend's answer comes back (or 502 saying
why the backend could not be reached), as ingress-nginx does with an Ingress whose one
rule is `path: /` to the backend service.

    python3 ingress.py --port 80 --backend http://httpbin.httpbin:14001
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--backend", required=True, metavar="URL")
    args = parser.parse_args()
    backend = args.backend.rstrip("/")

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            try:
                with urllib.request.urlopen(backend + self.path, timeout=10) as response:
                    status, body = response.status, response.read()
            except urllib.error.HTTPError as error:
                status, body = error.code, error.read()
            except OSError as error:
                status, body = 502, json.dumps({"error": f"{backend}: {type(error).__name__}"}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer(("0.0.0.0", args.port), Proxy).serve_forever()


if __name__ == "__main__":
    main()
