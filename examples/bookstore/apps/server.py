"""A bookstore app for `meshcp lab`: an HTTP server that says who answered.

Every response is JSON naming the pod and version that served it (also in the
`x-served-by` header), so clients can measure a TrafficSplit. It is plain HTTP: when it
answers a request from another pod, the sidecar has already terminated the mesh's mTLS.
With `--forward PATH=URL` a request to PATH is also sent on to URL (bookstore restocking
from bookwarehouse), and the answer says what that call returned.

    python3 server.py --port 14001 [--forward /buy-a-book/new=http://bookwarehouse.bookwarehouse:14001/restock-books]
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=14001)
    parser.add_argument("--forward", action="append", default=[], metavar="PATH=URL")
    args = parser.parse_args()
    forwards = dict(item.split("=", 1) for item in args.forward)
    pod = os.environ.get("POD_NAME", "unknown")
    version = os.environ.get("VERSION", "")
    served = {"count": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            served["count"] += 1
            body = {
                "served_by": pod,
                "version": version,
                "path": self.path,
                "method": self.command,
                "count": served["count"],
                # Proof that the sidecar took the TLS off: this server only speaks plaintext.
                "plaintext": True,
            }
            target = forwards.get(self.path)
            if target:
                body["forwarded"] = forward(target)
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("x-served-by", pod)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = answer
        do_POST = answer

        def log_message(self, format: str, *values: object) -> None:
            print(f"{self.client_address[0]} {self.command} {self.path} -> 200", flush=True)

    # The default backlog of 5 drops connections when a sidecar opens several at once.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    print(f"{pod} ({version or 'no version'}) listening on {args.port}", flush=True)
    server.serve_forever()


def forward(url: str) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


if __name__ == "__main__":
    main()
