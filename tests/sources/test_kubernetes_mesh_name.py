"""`meshcp serve --source kubernetes --mesh-name NAME` against the Kubernetes API emulator:
OSM labels a namespace `openservicemesh.io/monitored-by: osm` (OSM's default mesh name),
and a controller started with `--mesh-name osm` takes it into the mesh; one started
without it (mesh `meshcp`) does not. The settings come from the command line as
`meshcp serve` parses it, so the option's path to the source and to the mesh state is
what is tested."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock

from meshcp.cli.options import controller_settings
from meshcp.cli.parser import build_parser
from meshcp.runtime.controller import ControllerRuntime
from meshcp.sources.kubernetes import RESOURCES
from tests.sources.kube_fixtures import Emulator, kubeconfig
from tests.sources.kube_objects import key, seed
from tests.support import eventually

OSM_NAMESPACE = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": "osmshop", "labels": {"openservicemesh.io/monitored-by": "osm"}},
}
MESHCP_NAMESPACE = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": "shop", "labels": {"meshcp.dev/monitored-by": "meshcp"}},
}
#: meshcp's MeshConfig naming the other mesh: the command line wins, and it is reported.
MESH_CONFIG = {
    "apiVersion": "config.meshcp.dev/v1alpha1",
    "kind": "MeshConfig",
    "metadata": {"name": "meshcp"},
    "spec": {"meshName": "meshcp"},
}


async def _meshed(
    tmp_path: Path, *options: str, objects: tuple[dict[str, Any], ...]
) -> tuple[set[str], list[str]]:
    """The mesh's namespaces and the problems, once a controller started with `meshcp
    serve --source kubernetes OPTIONS` has synced from an API server holding `objects`."""
    async with Emulator() as k, kmock.Server(k):
        k.declare(*(key(resource) for resource in RESOURCES))
        seed(k, *objects)
        args = build_parser().parse_args(
            [
                "serve",
                "--source",
                "kubernetes",
                "--kubeconfig",
                str(kubeconfig(tmp_path / "kubeconfig", str(k.url))),
                "--insecure-xds",
                "--xds-address",
                "127.0.0.1:0",
                "--http-address",
                "127.0.0.1:0",
                "--debug-address",
                "127.0.0.1:0",
                "--state-dir",
                str(tmp_path / "state"),
                *options,
            ]
        )
        runtime = await ControllerRuntime.open(controller_settings(args))
        async with runtime:

            async def synced() -> bool:
                return runtime.readiness.ready and runtime.store.state.revision > 0

            await eventually(synced, timeout=30, what="the controller to sync from the API")
            state = runtime.store.state
            return set(state.meshed_namespaces), [str(problem) for problem in state.problems]


async def test_an_osm_labelled_namespace_joins_with_mesh_name_osm(tmp_path: Path) -> None:
    meshed, problems = await _meshed(
        tmp_path, "--mesh-name", "osm", objects=(OSM_NAMESPACE, MESHCP_NAMESPACE)
    )
    assert meshed == {"osmshop"}
    assert problems == []


async def test_without_mesh_name_the_osm_labelled_namespace_stays_out(tmp_path: Path) -> None:
    meshed, _ = await _meshed(tmp_path, objects=(OSM_NAMESPACE, MESHCP_NAMESPACE))
    assert meshed == {"shop"}


async def test_mesh_name_wins_over_a_meshconfig_naming_another_mesh(tmp_path: Path) -> None:
    meshed, problems = await _meshed(
        tmp_path, "--mesh-name", "osm", objects=(OSM_NAMESPACE, MESHCP_NAMESPACE, MESH_CONFIG)
    )
    assert meshed == {"osmshop"}
    assert len(problems) == 1, problems
    assert (
        "MeshConfig meshcp: meshName 'meshcp' is not the mesh this controller was started with" in problems[0]
    )
    assert "--mesh-name" in problems[0]
