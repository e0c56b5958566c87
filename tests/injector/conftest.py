"""A running injector for tests: a kmock Kubernetes API, the internal CA in memory, serving
certificates on disk, and the HTTPS server with the components `run_injector` wires."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes_asyncio import client

from meshcp.certs import InternalCA, IssuedCertificate, Issuer, MemoryStore
from meshcp.certs.issuance import xds_server_request
from meshcp.injector.admission import ISSUE_RETRY, Injector
from meshcp.injector.app import create_app
from meshcp.injector.kube import KubeCluster
from meshcp.injector.metrics import InjectorMetrics
from meshcp.injector.server import InjectorServer
from meshcp.injector.template import SidecarTemplate
from meshcp.injector.tls_reload import ReloadingTls
from meshcp.model.meshconfig import MESH_LABEL
from tests.injector.reviews import MESH_NAMESPACE, PLAIN_NAMESPACE

SERVER_NAME = "meshcp-injector.meshcp-system.svc"
TEMPLATE = SidecarTemplate(xds_host="meshcp-controller.meshcp-system.svc", xds_port=15128)


class FakeApi:
    """kmock's Kubernetes emulator with the objects the injector reads.

    kmock cannot fetch a cluster-scoped object by name (`/api/v1/namespaces/NAME` parses as
    a namespace, not a Namespace), so namespaces are served by reactions.
    """

    def __init__(self, emulator: kmock.KubernetesEmulator) -> None:
        self.emulator = emulator
        emulator.resources["v1/secrets"].namespaced = True  # declared: kmock serves only these

    @property
    def url(self) -> str:
        return str(self.emulator.url)

    def configuration(self) -> client.Configuration:
        return client.Configuration(host=self.url)

    def add_namespace(
        self, name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
    ) -> None:
        metadata: dict[str, Any] = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
        self.emulator[f"get /api/v1/namespaces/{name}"] << {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": metadata,
        }

    def namespace_reads(self, name: str) -> int:
        return len(self.emulator[f"get /api/v1/namespaces/{name}"])

    def secrets(self, namespace: str) -> dict[str, dict[str, Any]]:
        """The secrets created in `namespace`, by name."""
        found: dict[str, dict[str, Any]] = {}
        for (resource, ns, name), obj in self.emulator.objects.items():
            if resource.plural == "secrets" and ns == namespace and not obj.deleted:
                found[name] = obj.raw
        return found


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        fake = FakeApi(emulator)
        fake.add_namespace(MESH_NAMESPACE, {MESH_LABEL: "meshcp"})
        fake.add_namespace(PLAIN_NAMESPACE)
        yield fake


@pytest.fixture
async def ca() -> InternalCA:
    return await InternalCA.open(MemoryStore())


def write_pair(directory: Path, issued: IssuedCertificate, name: str = "tls") -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_text(issued.chain_pem)
    key.write_text(issued.private_key_pem)
    return cert, key


async def serving_pair(ca: InternalCA) -> IssuedCertificate:
    return await ca.issue(xds_server_request([SERVER_NAME, "localhost"]))


@pytest.fixture
async def serving_files(tmp_path: Path, ca: InternalCA) -> tuple[Path, Path]:
    return write_pair(tmp_path, await serving_pair(ca))


@pytest.fixture
async def client_tls(ca: InternalCA) -> ssl.SSLContext:
    """What the API server does: trust the webhook's CA bundle, check the service name."""
    return ssl.create_default_context(cadata=await ca.trust_bundle())


@dataclass
class RunningInjector:
    url: str
    port: int
    metrics: InjectorMetrics
    issuer: Issuer
    tls: ReloadingTls


@pytest.fixture
async def injector(
    api: FakeApi, ca: InternalCA, serving_files: tuple[Path, Path]
) -> AsyncIterator[RunningInjector]:
    metrics = InjectorMetrics()
    tls = ReloadingTls(*serving_files, on_reload=metrics.tls_reloaded)
    async with KubeCluster.connect(configuration=api.configuration()) as cluster:
        issuer = Issuer(ca, ISSUE_RETRY)
        service = Injector(cluster, issuer, TEMPLATE, ca.trust_bundle)
        server = InjectorServer(create_app(service, metrics), idle_timeout=15.0)
        await server.start("127.0.0.1", 0, tls.context)
        try:
            yield RunningInjector(f"https://127.0.0.1:{server.port}", server.port, metrics, issuer, tls)
        finally:
            await server.stop()
