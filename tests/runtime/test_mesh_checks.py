"""A MeshConfig's certProvider: the controller keeps the CA it was started with, and a
MeshConfig that sets another one is a problem on that MeshConfig (a default never is)."""

from __future__ import annotations

from pathlib import Path

from meshcp.model.meshconfig import MeshConfig
from meshcp.model.meta import ObjectRef
from meshcp.model.parse import parse_object
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.mesh_checks import conflicts
from meshcp.runtime.settings import Address, Settings
from tests.support import eventually

CONFLICT = (
    "certProvider 'vault' is not the CA this controller was started with ('internal', "
    "--ca-provider): certificates keep coming from 'internal'; start the controller with "
    "--ca-provider vault, or remove certProvider"
)


def _mesh_config(**spec: object) -> MeshConfig:
    manifest = {
        "apiVersion": "config.meshcp.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "meshcp"},
        "spec": spec,
    }
    parsed = parse_object(manifest)
    assert isinstance(parsed, MeshConfig)
    return parsed


def test_only_a_cert_provider_the_mesh_config_sets_can_disagree() -> None:
    assert conflicts(_mesh_config(), ca_provider="vault") == []
    assert conflicts(MeshConfig(), ca_provider="cert-manager") == []
    assert conflicts(_mesh_config(certProvider="cert-manager"), ca_provider="cert-manager") == []
    assert conflicts(_mesh_config(certProvider="vault"), ca_provider="internal") == [CONFLICT]


async def test_a_mesh_config_naming_another_ca_is_reported_and_the_rest_of_it_applies(tmp_path: Path) -> None:
    source = tmp_path / "mesh"
    source.mkdir()
    config = source / "meshconfig.yaml"
    header = "apiVersion: config.meshcp.dev/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: meshcp\nspec:\n"
    config.write_text(header + "  permissive: true\n  certProvider: vault\n")
    settings = Settings(
        xds_address=Address("127.0.0.1", 0),
        http_address=Address("127.0.0.1", 0),
        source=source,
        debounce_window=0.01,
        debounce_max=0.1,
    )
    runtime = await ControllerRuntime.open(settings)
    ref = ObjectRef("MeshConfig", "", "meshcp")
    async with runtime:

        async def reported() -> bool:
            return runtime.readiness.ready and any(p.ref == ref for p in runtime.store.state.problems)

        await eventually(reported, what="the MeshConfig's problem")
        (problem,) = [p for p in runtime.store.state.problems if p.ref == ref]
        assert problem.reason == CONFLICT
        assert runtime.store.state.mesh_config.permissive
        invalid = runtime.metrics.registry.get_sample_value
        assert invalid("meshcp_invalid_objects", {"kind": "MeshConfig"}) == 1

        config.write_text(header + "  permissive: true\n  certProvider: internal\n")

        async def resolved() -> bool:
            return not any(p.ref == ref for p in runtime.store.state.problems)

        await eventually(resolved, what="the problem to be resolved")
