"""A load generator for `meshcp lab` (fortio's part in OSM's demos): COUNT requests to a
URL, one after another, then one JSON line: the count of each status (or of each kind
of connection failure) and the last answer's body.

    python3 client.py http://httpbin.demo:14001/get --count 10 [--header NAME=VALUE]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import urllib.parse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (retries take time)")
    args = parser.parse_args()
    headers = dict(item.split("=", 1) for item in args.header)
    url = urllib.parse.urlsplit(args.url)
    statuses: collections.Counter[str] = collections.Counter()
    body = ""
    for _ in range(args.count):
        status, body = call(url, headers, args.timeout)
        statuses[status] += 1
    print(json.dumps({"url": args.url, "statuses": dict(statuses), "last": body}), flush=True)


def call(url: urllib.parse.SplitResult, headers: dict[str, str], timeout: float) -> tuple[str, str]:
    connection = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=timeout)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return str(response.status), response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__, ""
    finally:
        connection.close()


if __name__ == "__main__":
    main()
