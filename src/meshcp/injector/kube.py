"""The injector's Kubernetes calls (the only module here importing kubernetes_asyncio): read a
namespace, read the MeshConfig (meshcp's, merged with OSM's), create a bootstrap Secret, and
read and patch its webhook configuration's caBundle (`--webhook-config`). Its RBAC is
generated from these calls (`meshcp.sources.kubernetes_rbac.INJECTOR_RULES`).

Concurrent reads of the same object share one API request: a Deployment scaled to 200
replicas brings 200 admissions for one namespace at once. Nothing is cached beyond the
request in flight, so a namespace labelled a moment ago is seen as labelled.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from meshcp.certs.singleflight import SingleFlight
from meshcp.injector.decision import NamespaceInfo
from meshcp.kube.client import describe_api_error, load_configuration
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.osm_meshconfig import OSM_CONFIG_GROUP, OsmMeshConfig, effective
from meshcp.model.parse import InvalidObject, parse_object

log = logging.getLogger(__name__)

MESH_CONFIG_GROUP = "config.meshcp.dev"
MESH_CONFIG_VERSION = "v1alpha1"
MESH_CONFIG_PLURAL = "meshconfigs"
#: OSM's MeshConfig, listed in every namespace (it lives in OSM's): `model.osm_meshconfig`.
OSM_MESH_CONFIG_VERSION = "v1alpha2"
#: Seconds one API call may take: the API server gives the whole webhook 10 s by default.
REQUEST_TIMEOUT = 4.0


class ClusterError(Exception):
    """An API call failed; the message says which call and why, for the admission reply."""


class KubeCluster:
    """The Kubernetes API as the injector uses it; create it with `KubeCluster.connect`."""

    def __init__(self, api: client.ApiClient, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._admission = client.AdmissionregistrationV1Api(api)
        self._timeout = timeout
        self._namespaces: SingleFlight[str, NamespaceInfo | None] = SingleFlight()
        self._mesh_configs: SingleFlight[str, MeshConfig] = SingleFlight()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, kubeconfig: Path | None = None, *, configuration: client.Configuration | None = None
    ) -> AsyncIterator[KubeCluster]:
        """In-cluster credentials when running in a pod, else `kubeconfig` (or the default
        kubeconfig); `configuration` overrides both (tests point it at a mock API)."""
        if configuration is None:
            configuration = await load_configuration(None, str(kubeconfig) if kubeconfig else None)
        api = client.ApiClient(configuration)
        try:
            yield cls(api)
        finally:
            await api.close()

    async def namespace(self, name: str) -> NamespaceInfo | None:
        """The namespace's labels and annotations, None if it does not exist."""
        return await self._namespaces.do(name, lambda: self._read_namespace(name))

    async def _read_namespace(self, name: str) -> NamespaceInfo | None:
        try:
            found = await self._core.read_namespace(name, _request_timeout=self._timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise ClusterError(f"cannot read namespace {name}: {describe_api_error(error)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ClusterError(f"cannot read namespace {name}: {error!r}") from None
        metadata = found.metadata
        return NamespaceInfo(name, dict(metadata.labels or {}), dict(metadata.annotations or {}))

    async def mesh_config(self, name: str) -> MeshConfig:
        """The cluster's MeshConfig `name`, each setting it leaves unset taken from OSM's
        MeshConfig if the cluster has one (as the controller merges them); the defaults
        for an object that is absent or invalid (the controller reports the problem)."""
        return await self._mesh_configs.do(name, lambda: self._read_both(name))

    async def _read_both(self, name: str) -> MeshConfig:
        own = await self._read_mesh_config(name)
        osm = await self._read_osm_mesh_configs()
        return effective((own,), osm) if osm else own

    async def _read_osm_mesh_configs(self) -> tuple[OsmMeshConfig, ...]:
        """OSM's MeshConfigs, by namespace and name; none when OSM's CRD is not installed."""
        try:
            found = await self._custom.list_cluster_custom_object(
                OSM_CONFIG_GROUP, OSM_MESH_CONFIG_VERSION, MESH_CONFIG_PLURAL, _request_timeout=self._timeout
            )
        except ApiException as error:
            if error.status == 404:
                return ()
            raise ClusterError(f"cannot list OSM's MeshConfigs: {describe_api_error(error)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ClusterError(f"cannot list OSM's MeshConfigs: {error!r}") from None
        configs = []
        for item in found.get("items", []) if isinstance(found, dict) else []:
            manifest = {
                **item,
                "apiVersion": f"{OSM_CONFIG_GROUP}/{OSM_MESH_CONFIG_VERSION}",
                "kind": "MeshConfig",
            }
            try:
                parsed = parse_object(manifest)
            except InvalidObject as error:
                log.warning("%s is invalid, not used for injection: %s", error.ref, error.reason)
                continue
            if isinstance(parsed, OsmMeshConfig):
                configs.append(parsed)
        return tuple(sorted(configs, key=lambda config: (config.meta.namespace, config.meta.name)))

    async def _read_mesh_config(self, name: str) -> MeshConfig:
        try:
            manifest = await self._custom.get_cluster_custom_object(
                MESH_CONFIG_GROUP,
                MESH_CONFIG_VERSION,
                MESH_CONFIG_PLURAL,
                name,
                _request_timeout=self._timeout,
            )
        except ApiException as error:
            if error.status == 404:
                return MeshConfig()
            raise ClusterError(f"cannot read MeshConfig {name}: {describe_api_error(error)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ClusterError(f"cannot read MeshConfig {name}: {error!r}") from None
        try:
            parsed = parse_object(manifest)
        except InvalidObject as error:
            log.warning("MeshConfig %s is invalid, injecting with the defaults: %s", name, error.reason)
            return MeshConfig()
        return parsed if isinstance(parsed, MeshConfig) else MeshConfig()

    async def create_secret(self, secret: Mapping[str, Any]) -> None:
        """Create `secret` in its namespace."""
        namespace = secret["metadata"]["namespace"]
        name = secret["metadata"]["name"]
        body: Any = dict(secret)  # the client sends a dict as it is; no model round trip
        try:
            await self._core.create_namespaced_secret(namespace, body, _request_timeout=self._timeout)
        except ApiException as error:
            raise ClusterError(
                f"cannot create secret {namespace}/{name}: {describe_api_error(error)}"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ClusterError(f"cannot create secret {namespace}/{name}: {error!r}") from None

    async def webhook_ca_bundles(self, name: str) -> tuple[str, list[str]]:
        """The resourceVersion of MutatingWebhookConfiguration `name` and each of its
        webhooks' `clientConfig.caBundle` (base64 PEM, "" where none)."""
        what = f"MutatingWebhookConfiguration {name}"
        try:
            found = await self._admission.read_mutating_webhook_configuration(
                name, _request_timeout=self._timeout
            )
        except ApiException as error:
            raise ClusterError(f"cannot read {what}: {describe_api_error(error)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ClusterError(f"cannot read {what}: {error!r}") from None
        bundles = [str(w.client_config.ca_bundle or "") for w in found.webhooks or []]
        return str(found.metadata.resource_version or ""), bundles

    async def set_webhook_ca_bundle(
        self, name: str, resource_version: str, webhooks: int, bundle: str
    ) -> None:
        """Set the caBundle of the first `webhooks` webhooks of `name` to `bundle`, only if
        the object is still at `resource_version` (a JSON Patch `test`: a configuration
        changed meanwhile, say re-applied with another list of webhooks, is read again)."""
        patch: Any = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}] + [
            {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
            for index in range(webhooks)
        ]
        what = f"MutatingWebhookConfiguration {name}"
        try:
            await self._admission.patch_mutating_webhook_configuration(
                name, patch, _request_timeout=self._timeout
            )
        except ApiException as error:
            raise ClusterError(f"cannot patch {what}: {describe_api_error(error)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise ClusterError(f"cannot patch {what}: {error!r}") from None
