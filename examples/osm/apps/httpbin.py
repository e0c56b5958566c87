"""An httpbin for `meshcp lab`: answers every request with JSON saying who served it, and
counts the requests of each path, so a retry's attempts can be seen at the server.

    GET /get, /anything/...   200, the request as JSON ("attempt": the path's count so far)
    GET /status/CODE          that status (httpbin's own)
    GET /fail/N/TAG           503 for the first N requests of that exact path, then 200:
                              a server that fails, then recovers (the Retry demo)
    GET /attempts/PATH        how many requests /PATH got (not itself counted)

It is plain HTTP: a request from another pod arrives through its sidecar, which took the
mesh's mTLS off.

    python3 httpbin.py --port 14001
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAIL = re.compile(r"/fail/(\d+)/")
STATUS = re.compile(r"/status/(\d{3})$")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=14001)
    args = parser.parse_args()
    pod = os.environ.get("POD_NAME", "unknown")
    namespace = os.environ.get("POD_NAMESPACE", "")
    counts: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            if self.path.startswith("/attempts/"):
                counted = self.path.removeprefix("/attempts")
                with lock:
                    self.reply(200, {"path": counted, "attempts": counts.get(counted, 0)})
                return
            with lock:
                attempt = counts[self.path] = counts.get(self.path, 0) + 1
            status = 200
            if (fail := FAIL.match(self.path)) and attempt <= int(fail[1]):
                status = 503
            elif status_code := STATUS.match(self.path):
                status = int(status_code[1])
            self.reply(
                status,
                {
                    "served_by": f"{namespace}/{pod}",
                    "method": self.command,
                    "path": self.path,
                    "host": self.headers.get("host", ""),
                    "attempt": attempt,
                },
            )

        def reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = answer
        do_POST = answer
        do_HEAD = answer

        def log_message(self, format: str, *values: object) -> None:
            print(f"{self.client_address[0]} {format % values}", flush=True)

    # The default backlog of 5 drops connections when a sidecar opens several at once.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    print(f"{namespace}/{pod} listening on {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
