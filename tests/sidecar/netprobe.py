"""A tiny TCP probe run inside network namespaces (stdlib only; its source is passed to
`python -c`, so unprivileged UIDs can run it without reading this repository).

    netprobe serve HOST_TAG PORT...   listen on 0.0.0.0:PORT...; print "ready"; answer each
                                      connection with one JSON line (which host and listener
                                      accepted it, and SO_ORIGINAL_DST); exit when stdin closes
    netprobe connect HOST PORT        connect, print the line the listener sent, exit 0
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys

#: linux/netfilter_ipv4.h: the destination a connection had before NAT rewrote it.
SO_ORIGINAL_DST = 80


def original_destination(conn: socket.socket) -> str | None:
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, address = struct.unpack("!2xH4s8x", raw)
    return f"{socket.inet_ntoa(address)}:{port}"


def serve(tag: str, ports: list[int]) -> None:
    selector = selectors.DefaultSelector()
    listeners: dict[int, socket.socket] = {}
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(64)
        selector.register(sock, selectors.EVENT_READ)
        listeners[sock.fileno()] = sock
    selector.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            listener = listeners.get(key.fd)
            if listener is None:  # stdin: the test is done when it closes
                if not sys.stdin.readline():
                    return
                continue
            conn, _peer = listener.accept()
            with conn:
                report = {
                    "host": tag,
                    "listener": listener.getsockname()[1],
                    "original_dst": original_destination(conn),
                }
                conn.sendall(json.dumps(report).encode() + b"\n")


def connect(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5) as conn:
        line = conn.makefile("r").readline()
    print(line, end="", flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "serve":
        serve(argv[1], [int(port) for port in argv[2:]])
    elif argv[0] == "connect":
        connect(argv[1], int(argv[2]))
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
