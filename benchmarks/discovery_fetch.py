"""One proxy fetching its clusters from scratch, from each server, under `request_load`:

- meshcp: a new ADS stream (SotW) on an open HTTP/2 connection, the first CDS request carrying
  the pod's node, then the stream is cancelled once the DiscoveryResponse arrived;
- sovereign: `POST /v3/discovery:clusters` over HTTP/1.1 keep-alive (a JSON DiscoveryRequest
  with the pod's node and an empty version).

Both clients cost far less than the servers: meshcp's answers are not decoded (grpclib with
a bytes codec) and sovereign's are read by Content-Length. The first answer of each is
checked to carry the expected number of clusters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import mesh_manifests as mm
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from mesh_resources import InfoCache, parse_response
from request_load import Result, measure

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest
from meshcp.cache import resource_types

SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


class _FirstChecked:
    """The size of each answer; the first must carry `expected` clusters (`count` counts them)."""

    def __init__(self, server: str, expected: int, count: Callable[[bytes], int]) -> None:
        self._server = server
        self._expected = expected
        self._count = count
        self._checked = False

    def size(self, reply: bytes) -> int:
        if not self._checked:
            got = self._count(reply)
            if got != self._expected:
                raise RuntimeError(f"{self._server} sent {got} clusters, expected {self._expected}")
            self._checked = True
        return len(reply)


class RawCodec(CodecBase):
    """Bytes in, bytes out: the client must cost far less than the server it measures."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


async def bench_meshcp(
    port: int, node: mm.ProxyRef, expected: int, args: argparse.Namespace, cpu: Callable[[], float]
) -> Result:
    request = bytes(
        DiscoveryRequest(node=Node(id=node.node_id, cluster=node.cluster), type_url=resource_types.CLUSTER)
    )
    channels = [Channel("127.0.0.1", port, codec=RawCodec()) for _ in range(-(-args.concurrency // 50))]
    counter = 0
    cache = InfoCache()
    answer = _FirstChecked(
        "meshcp", expected, lambda reply: len(parse_response(reply, 0, len(reply), False, cache).infos)
    )

    async def fetch() -> int:
        nonlocal counter
        counter += 1
        channel = channels[counter % len(channels)]
        async with channel.request(SOTW, Cardinality.STREAM_STREAM, bytes, bytes) as stream:
            await stream.send_message(request)
            reply = await stream.recv_message()
            await stream.cancel()
        assert isinstance(reply, bytes)
        return answer.size(reply)

    return await _measure("meshcp", fetch, expected, args, cpu, channels)


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client (POST, Content-Length responses)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        self.writer.close()


async def bench_sovereign(
    port: int, node: mm.ProxyRef, expected: int, args: argparse.Namespace, cpu: Callable[[], float]
) -> Result:
    body = json.dumps(
        {
            "node": {
                "id": node.node_id,
                "cluster": node.cluster,
                "user_agent_name": "envoy",
                "user_agent_build_version": {"version": {"major_number": 1, "minor_number": 40, "patch": 0}},
            },
            "version_info": "",
            "resource_names": [],
            "type_url": resource_types.CLUSTER,
        }
    ).encode()
    request = (
        f"POST /v3/discovery:clusters HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: list[HttpConnection] = []
    opened: list[HttpConnection] = []
    answer = _FirstChecked("sovereign", expected, lambda reply: len(json.loads(reply)["resources"]))

    async def fetch() -> int:
        connection = idle.pop() if idle else None
        if connection is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
            connection = HttpConnection(reader, writer)
            opened.append(connection)
        status, reply = await connection.post(request)
        idle.append(connection)
        if status != 200:
            raise RuntimeError(f"sovereign answered {status}: {reply[:200]!r}")
        return answer.size(reply)

    return await _measure("sovereign", fetch, expected, args, cpu, opened)


class _Closes(Protocol):
    def close(self) -> None: ...


async def _measure(
    server: str,
    fetch: Callable[[], Awaitable[int]],
    expected: int,
    args: argparse.Namespace,
    cpu: Callable[[], float],
    opened: Sequence[_Closes],
) -> Result:
    """`request_load.measure` with the command line's load, then every connection closed
    (`opened` is read at the end: connections opened during the run are closed too)."""
    try:
        return await measure(server, fetch, expected, cpu, args.concurrency, args.warmup, args.duration)
    finally:
        for connection in opened:
            connection.close()
