"""OSM's MeshConfig and OSM's namespace label through the Kubernetes source, on the real API
server, with the token of deploy/'s controller ServiceAccount (so its RBAC, regenerated for
`meshconfigs.config.openservicemesh.io`, is what lets it read them).

OSM's CRD is OSM's (installed with OSM); a stand-in with OSM's group, kind, scope and
version serves it here, keeping every field as OSM's own schema would let through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from meshcp.kube.client import default_api_client
from meshcp.model.osm_meshconfig import OsmMeshConfig
from meshcp.model.parse import parse_object
from meshcp.sources.events import Upsert
from meshcp.sources.kubernetes import KubernetesSource
from tests.kube.conftest import Installed
from tests.sources.kube_source import Collector, is_synced

CRD = "meshconfigs.config.openservicemesh.io"
OSM_CONFIG: dict[str, Any] = {
    "apiVersion": "config.openservicemesh.io/v1alpha2",
    "kind": "MeshConfig",
    "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
    "spec": {
        "traffic": {"enablePermissiveTrafficPolicyMode": True, "outboundPortExclusionList": [6379]},
        "certificate": {"serviceCertValidityDuration": "1h", "certKeyBitSize": 2048},
    },
}


def _stand_in() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD},
        "spec": {
            "group": "config.openservicemesh.io",
            "scope": "Namespaced",
            "names": {
                "kind": "MeshConfig",
                "plural": "meshconfigs",
                "singular": "meshconfig",
                "listKind": "MeshConfigList",
            },
            "versions": [
                {
                    "name": "v1alpha2",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


@pytest.fixture
def osm_objects(installed: Installed) -> Iterator[Installed]:
    kube = installed.api
    kube.apply([_stand_in()])
    kube.kubectl("wait", "--for=condition=established", f"crd/{CRD}")
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "osm-system"}},
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "osm-shop", "labels": {"openservicemesh.io/monitored-by": "meshcp"}},
        },
    ]
    kube.apply(namespaces)
    kube.apply([OSM_CONFIG])
    try:
        yield installed
    finally:
        kube.kubectl("delete", "namespace", "osm-system", "osm-shop", "--wait=false")
        kube.kubectl("delete", f"crd/{CRD}")


async def test_the_controller_reads_osms_meshconfig_and_osm_labelled_namespaces(
    osm_objects: Installed,
) -> None:
    kube = osm_objects.api
    kubeconfig = kube.kubeconfig_for("meshcp-system", "meshcp-controller")
    collector = Collector()
    source = KubernetesSource(
        collector, api_client_factory=partial(default_api_client, None, str(kubeconfig))
    )
    task = asyncio.create_task(source.run())
    try:
        events = await collector.until(is_synced)
        upserts = {event.obj.ref: event.obj for event in events if isinstance(event, Upsert)}
        expected = parse_object(OSM_CONFIG)
        assert isinstance(expected, OsmMeshConfig)
        found = upserts.get(expected.ref)
        assert isinstance(found, OsmMeshConfig), sorted(map(str, upserts))
        # (kubectl's last-applied annotation aside, the object as written)
        assert replace(found.settings, meta=expected.meta) == expected.settings
        assert found.settings.permissive and found.settings.outbound_port_exclusions == (6379,)
        assert [path for path, _ in found.unsupported] == ["spec.certificate.certKeyBitSize"]
        names = {str(ref) for ref in upserts}
        assert "Namespace osm-shop" in names
        assert "Namespace osm-system" not in names  # OSM's own namespace is not in the mesh
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
