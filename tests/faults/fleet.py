"""Many simulated proxies for a controller restarted under them: a generated mesh of
`services` x `pods` pods (permissive, one namespace) written as manifests, and one ADS
stream per pod (grpclib, many streams per connection) that behaves as Envoy does across a
controller restart: it keeps what it holds, reconnects with back-off, presents the
versions it holds on its new stream (rule 11), and ACKs every response.

A proxy subscribes to clusters and listeners (wildcards) and to its two secrets; it has
converged on a stream once it holds a version of each and its secrets were answered on
that stream (named subscriptions are always answered). Endpoints and routes are left out:
they add load, not a different recovery path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpclib.client
import grpclib.const
import yaml
from grpclib.exceptions import GRPCError, StreamTerminatedError

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshcp.cache import resource_types
from meshcp.compile import naming
from meshcp.xds.service import SOTW_PATH

NAMESPACE = "fleet"
CDS, LDS, SDS = resource_types.CLUSTER, resource_types.LISTENER, resource_types.SECRET
SECRETS = [naming.ROOT_CERT, naming.SERVICE_CERT]
STREAM = grpclib.const.Cardinality.STREAM_STREAM


def write_mesh(directory: Path, services: int, pods: int) -> list[tuple[str, str]]:
    """The manifests of the mesh in `directory`; every pod's (node id, cluster)."""
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"meshcp.dev/monitored-by": "meshcp"}},
        },
        {
            "apiVersion": "config.meshcp.dev/v1alpha1",
            "kind": "MeshConfig",
            "metadata": {"name": "meshcp"},
            "spec": {"permissive": True},
        },
    ]
    nodes = []
    for s in range(services):
        name = f"svc-{s:03d}"
        meta = {"name": name, "namespace": NAMESPACE}
        documents.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta,
                "spec": {
                    "clusterIP": f"10.96.{s // 256}.{s % 256}",
                    "selector": {"app": name},
                    "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
                },
            }
        )
        for r in range(pods):
            pod = f"{name}-{r}"
            n = s * pods + r
            documents.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": NAMESPACE, "labels": {"app": name}},
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [{"name": "app", "ports": [{"containerPort": 8080}]}],
                    },
                    "status": {
                        "podIP": f"10.128.{n // 256}.{n % 256}",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
            )
            proxy_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"meshcp:{NAMESPACE}/{pod}")
            nodes.append((f"{proxy_uuid}.sidecar.{name}.{NAMESPACE}.cluster.local", f"{NAMESPACE}/{name}"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mesh.yaml").write_text(yaml.safe_dump_all(documents))
    return nodes


@dataclass
class Proxy:
    node_id: str
    cluster: str
    #: Version held per type (kept across reconnects, as Envoy keeps its configuration).
    versions: dict[str, str] = field(default_factory=dict)
    #: Types answered on the current stream.
    answered: set[str] = field(default_factory=set)
    connects: int = 0
    converged_at: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.converged_at > 0


class Fleet:
    """The proxies, `per_connection` streams to a connection; run with `async with`."""

    def __init__(self, port: int, nodes: list[tuple[str, str]], per_connection: int = 100) -> None:
        self.port = port
        self.proxies = [Proxy(node, cluster) for node, cluster in nodes]
        self._per = per_connection
        self._channels: list[grpclib.client.Channel] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Fleet:
        for offset in range(0, len(self.proxies), self._per):
            channel = grpclib.client.Channel("127.0.0.1", self.port)
            self._channels.append(channel)
            for proxy in self.proxies[offset : offset + self._per]:
                self._tasks.append(asyncio.create_task(self._run(channel, proxy)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            channel.close()

    def converged(self) -> int:
        return sum(proxy.converged for proxy in self.proxies)

    def restarted(self) -> None:
        """The controller went away: every proxy has to converge again (on a new stream)."""
        for proxy in self.proxies:
            proxy.converged_at = 0.0

    async def _run(self, channel: grpclib.client.Channel, proxy: Proxy) -> None:
        delay = 0.1
        while True:
            try:
                await self._stream(channel, proxy)
                delay = 0.1
            except (GRPCError, StreamTerminatedError, ConnectionError, OSError) as error:
                proxy.errors.append(type(error).__name__)
            proxy.answered = set()
            await asyncio.sleep(delay)  # Envoy's reconnect back-off, not a synchronisation
            delay = min(delay * 2, 2.0)

    async def _stream(self, channel: grpclib.client.Channel, proxy: Proxy) -> None:
        async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
            proxy.connects += 1
            node = Node(id=proxy.node_id, cluster=proxy.cluster)
            await stream.send_message(
                DiscoveryRequest(node=node, type_url=CDS, version_info=proxy.versions.get(CDS, ""))
            )
            await stream.send_message(
                DiscoveryRequest(type_url=LDS, version_info=proxy.versions.get(LDS, ""))
            )
            await stream.send_message(DiscoveryRequest(type_url=SDS, resource_names=SECRETS))
            while (response := await stream.recv_message()) is not None:
                type_url = response.type_url
                proxy.versions[type_url] = response.version_info
                proxy.answered.add(type_url)
                names = SECRETS if type_url == SDS else []
                await stream.send_message(
                    DiscoveryRequest(
                        type_url=type_url,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                        resource_names=names,
                    )
                )
                if not proxy.converged and SDS in proxy.answered and {CDS, LDS} <= proxy.versions.keys():
                    proxy.converged_at = time.monotonic()
        with contextlib.suppress(Exception):
            await stream.end()
