"""HTTP clients of requests through Envoy."""

from __future__ import annotations

import aiohttp


def new_connection_per_request() -> aiohttp.ClientSession:
    """A client session (5 s timeout) that opens a new connection for every request: a
    kept-alive connection would pin a request to an old upstream, configuration or handshake."""
    connector = aiohttp.TCPConnector(force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5))
