"""Run inside a lab pod (`meshcp lab exec POD -- python probe.py ...`); prints one JSON line.

probe.py http URL [--method M] [--header NAME=VALUE] [--count N]
    -> {"statuses": {"200": 3}, "served_by": {"bookstore-v1-0": 3}}
probe.py tcp HOST PORT
    -> {"echoed": true, "error": null}
probe.py admin PATH
    -> {"body": "..."}  (the pod's Envoy admin interface, 127.0.0.1:15000)
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import socket


def http_probe(args: argparse.Namespace) -> dict[str, object]:
    host, _, rest = args.url.removeprefix("http://").partition("/")
    name, _, port = host.partition(":")
    headers = dict(item.split("=", 1) for item in args.header)
    statuses: collections.Counter[str] = collections.Counter()
    served: collections.Counter[str] = collections.Counter()
    for _ in range(args.count):
        connection = http.client.HTTPConnection(name, int(port or 80), timeout=5)
        try:
            connection.request(args.method, "/" + rest, headers=headers)
            response = connection.getresponse()
            body = response.read()
            statuses[str(response.status)] += 1
            if response.status == 200:
                served[response.getheader("x-served-by") or ""] += 1
                if json.loads(body).get("plaintext") is not True:
                    statuses["not-plaintext"] += 1
        except OSError as error:
            statuses[type(error).__name__] += 1
        except http.client.HTTPException as error:
            statuses[type(error).__name__] += 1
        finally:
            connection.close()
    return {"statuses": dict(statuses), "served_by": dict(served)}


def tcp_probe(args: argparse.Namespace) -> dict[str, object]:
    payload = b"meshcp-lab-probe\n"
    try:
        with socket.create_connection((args.host, args.port), timeout=5) as sock:
            sock.sendall(payload)
            received = b""
            while len(received) < len(payload):
                chunk = sock.recv(1024)
                if not chunk:
                    break
                received += chunk
    except OSError as error:
        return {"echoed": False, "error": type(error).__name__}
    return {"echoed": received == payload, "error": None if received else "closed"}


def main() -> None:
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    http_ = modes.add_parser("http")
    http_.add_argument("url")
    http_.add_argument("--method", default="GET")
    http_.add_argument("--header", action="append", default=[])
    http_.add_argument("--count", type=int, default=1)
    tcp = modes.add_parser("tcp")
    tcp.add_argument("host")
    tcp.add_argument("port", type=int)
    admin = modes.add_parser("admin")
    admin.add_argument("path")
    args = parser.parse_args()
    if args.mode == "admin":
        connection = http.client.HTTPConnection("127.0.0.1", 15000, timeout=5)
        connection.request("GET", args.path)
        result: dict[str, object] = {"body": connection.getresponse().read().decode()}
    else:
        result = http_probe(args) if args.mode == "http" else tcp_probe(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
