"""HTTP GETs to servers inside a lab namespace, from a process outside it.

The controller's HTTP endpoint and the sidecars' admin interfaces listen on loopback
addresses of their own namespaces, which nothing on the host can reach (and the lab adds
no addresses to the host). A socket, though, belongs to the namespace it was created in:
a worker thread switches itself into the namespace with setns(2), connects, and switches
back; the event loop then uses the connected socket as any other. setns(2) changes only
the calling thread, so the event loop's thread never leaves the host's namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import socket
from typing import Any

from meshcp.lab.network import LabError

CLONE_NEWNET = 0x40000000
TIMEOUT = 5.0


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def connect_in(netns: str, host: str, port: int, timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection to host:port made from inside network namespace `netns`."""
    with open(f"/run/netns/{netns}", "rb") as target, open("/proc/thread-self/ns/net", "rb") as home:
        _setns(target.fileno())
        try:
            return socket.create_connection((host, port), timeout)
        finally:
            # A thread left in the lab's namespace would send other work there.
            _setns(home.fileno())


async def get(netns: str, port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET http://host:port/path inside `netns`: the status and the body."""
    try:
        sock = await asyncio.to_thread(connect_in, netns, host, port)
    except OSError as error:
        raise LabError(f"cannot reach {host}:{port} in {netns}: {error.strerror or error}") from None
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        # HTTP/1.1: Envoy's admin interface refuses 1.0 (426).
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), TIMEOUT)
    except (OSError, TimeoutError) as error:
        raise LabError(f"GET {path} in {netns} failed: {error}") from None
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise LabError(f"GET {path} in {netns}: not an HTTP response") from None
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, body


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def get_json(netns: str, port: int, path: str) -> Any:
    status, body = await get(netns, port, path)
    if status != 200:
        raise LabError(f"GET {path} in {netns} answered {status}: {body[:200]!r}")
    return json.loads(body)
