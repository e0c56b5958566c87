"""The lab's Prometheus, asked from outside its node namespace.

Prometheus listens on loopback inside the lab's node namespace (as the controller does),
so nothing on the host reaches it over the network: each query is made through a socket
created inside that namespace (`lab.netns_http`). `meshcp stat`, `meshcp edges` and
`meshcp demo` read golden metrics this way.
"""

from __future__ import annotations

import os
from pathlib import Path

from meshcp.kpi.prometheus import Fetch, Prometheus, PrometheusUnreachable
from meshcp.lab import layout, netns_http
from meshcp.lab.network import LabError

URL = layout.PROMETHEUS_URL


def reachable() -> bool:
    """Whether this process can ask the lab's Prometheus: root, with the lab's node
    namespace present."""
    return os.geteuid() == 0 and Path(f"/run/netns/{layout.NODE_NETNS}").exists()


def lab_prometheus() -> Prometheus:
    """A client of the lab's Prometheus whose queries run inside the node namespace."""
    return Prometheus(URL, _in_node_namespace())


def _in_node_namespace() -> Fetch:
    async def fetch(path: str) -> tuple[int, bytes]:
        try:
            return await netns_http.get(
                layout.NODE_NETNS, layout.PROMETHEUS_PORT, path, layout.PROMETHEUS_HOST
            )
        except LabError as error:
            raise PrometheusUnreachable(f"{URL} (netns {layout.NODE_NETNS})", str(error)) from None

    return fetch
