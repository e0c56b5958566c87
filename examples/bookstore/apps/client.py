"""A bookstore client for `meshcp lab`: calls a URL in a loop and reports what happened.

As a container (bookbuyer, bookthief) it prints one JSON line per request. With
`--duration` it stops after that many seconds and prints one summary line instead:
status counts, which pod served the successful requests, and connection failures.
`meshcp demo` runs it through `meshcp lab exec` to measure the mesh.

    python3 client.py --url http://bookstore.bookstore:14001/books-bought \
        --header client-app=bookbuyer [--interval 0.5] [--duration 10]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import time
import urllib.parse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=0.0, help="0: forever, one line per request")
    args = parser.parse_args()
    headers = dict(item.split("=", 1) for item in args.header)
    url = urllib.parse.urlsplit(args.url)
    statuses: collections.Counter[str] = collections.Counter()
    served: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + args.duration if args.duration else None
    while deadline is None or time.monotonic() < deadline:
        status, by = call(url, args.method, headers)
        statuses[str(status)] += 1
        if status == 200 and by:
            served[by] += 1
        if deadline is None:
            print(json.dumps({"url": args.url, "status": status, "served_by": by}), flush=True)
        if args.interval:
            time.sleep(args.interval)
    print(json.dumps({"url": args.url, "statuses": dict(statuses), "served_by": dict(served)}), flush=True)


def call(url: urllib.parse.SplitResult, method: str, headers: dict[str, str]) -> tuple[int | str, str]:
    """The status (or the kind of connection failure) and who served it."""
    connection = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=5)
    try:
        connection.request(method, url.path or "/", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("x-served-by") or ""
    except ConnectionResetError:
        return "reset", ""
    except ConnectionRefusedError:
        return "refused", ""
    except TimeoutError:
        return "timeout", ""
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__, ""
    finally:
        connection.close()


if __name__ == "__main__":
    main()
