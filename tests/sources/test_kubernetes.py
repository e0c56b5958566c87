"""The Kubernetes source (meshcp.sources.kubernetes) against kmock's emulator of the API
server (real HTTP): every watched kind's changes become events, invalid objects are
reported and skipped, only namespaces of the mesh are in scope, and the default client
reads the kubeconfig. How it lists and watches: test_kubernetes_watch.py; its RBAC:
test_kubernetes_rbac.py."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcp.kube.client import default_api_client
from meshcp.model.meta import ObjectRef
from meshcp.model.parse import parse_object
from meshcp.sources.events import Delete, Invalid, Resolved, Upsert
from meshcp.sources.kubernetes import KubernetesSource
from tests.sources.kube_fixtures import Emulator
from tests.sources.kube_objects import (
    BY_KIND,
    CHANGES,
    LABEL,
    LABEL_KEY,
    OSM_MESH_CONFIG,
    SAMPLES,
    namespace,
    pod,
    seed,
    service,
    stored,
    url_of,
)
from tests.sources.kube_source import Collector, is_synced, refs, start, stop, upsert_of


# tests/sources/test_kubernetes_envoy.py still imports these from here; they live in
# tests.sources.kube_objects.
def test_samples_are_valid() -> None:
    for kind, manifest in SAMPLES.items():
        assert parse_object(manifest).ref.kind == kind
        changed = copy.deepcopy(manifest)
        CHANGES[kind](changed)
        assert parse_object(changed) != parse_object(manifest), kind


async def test_add_update_delete_of_every_kind(emulator: Emulator) -> None:
    k = emulator
    seed(k, namespace("shop"))
    collector = Collector()
    task, _ = await start(str(k.url), collector)
    try:
        events = await collector.until(is_synced)
        assert refs(events) == [("upsert", "Namespace shop"), ("synced", "kubernetes")]
        for kind, manifest in SAMPLES.items():
            resource = BY_KIND[kind]
            ns = manifest["metadata"].get("namespace", "")
            name = manifest["metadata"]["name"]
            expected = parse_object(manifest)
            if kind != "Namespace":
                await k.post(url_of(resource, ns), json=stored(manifest))
                event = await collector.next()
                assert event == Upsert(expected), kind
            changed = copy.deepcopy(manifest)
            CHANGES[kind](changed)
            await k.patch(url_of(resource, ns, name), json=stored(changed))
            assert await collector.next() == Upsert(parse_object(changed)), kind
            if kind != "Namespace":
                await k.delete(url_of(resource, ns, name))
                assert await collector.next() == Delete(expected.ref), kind
        assert collector.drain() == []
    finally:
        await stop(task)


async def test_invalid_objects_are_reported_and_skipped(emulator: Emulator) -> None:
    k = emulator
    services = BY_KIND["Service"]
    seed(k, namespace("shop"), service("good"), service("bad", port="eighty"))
    collector = Collector()
    task, _ = await start(str(k.url), collector)
    try:
        events = await collector.until(is_synced)
        invalid = [event for event in events if isinstance(event, Invalid)]
        assert [event.problem.ref for event in invalid] == [ObjectRef("Service", "shop", "bad")]
        assert "port" in invalid[0].problem.reason
        assert ("upsert", "Service shop/good") in refs(events)
        # A good version is kept when a bad one follows; fixing it or deleting it clears the problem.
        await k.patch(
            url_of(services, "shop", "good"), json={"spec": {"ports": [{"name": "http", "port": -1}]}}
        )
        assert refs([await collector.next()]) == [("invalid", "Service shop/good")]
        await k.patch(
            url_of(services, "shop", "good"), json={"spec": {"ports": [{"name": "http", "port": 80}]}}
        )
        assert await collector.next() == Upsert(parse_object(service("good")))
        await k.delete(url_of(services, "shop", "bad"))
        assert await collector.next() == Resolved(ObjectRef("Service", "shop", "bad"))
    finally:
        await stop(task)


async def test_namespaces_outside_the_mesh_are_ignored_until_they_join(emulator: Emulator) -> None:
    k = emulator
    namespaces, pods = BY_KIND["Namespace"], BY_KIND["Pod"]
    seed(k, namespace("shop"), namespace("other", labelled=False), pod("a", "shop"), pod("b", "other"))
    seed(k, pod("c", "nowhere"))
    collector = Collector()
    task, _ = await start(str(k.url), collector)
    try:
        events = await collector.until(is_synced)
        assert sorted(refs(events)) == [
            ("synced", "kubernetes"),
            ("upsert", "Namespace shop"),
            ("upsert", "Pod shop/a"),
        ]
        # Namespaces are listed whole (meshcp's label or OSM's decides membership, which
        # no one label selector can say); the others are filtered by them.
        lists = [q for path, q in k.list_requests if path == url_of(namespaces)]
        assert "labelSelector" not in lists[0]
        # Changes outside the mesh are not seen.
        await k.post(url_of(pods, "other"), json=stored(pod("d", "other")))
        # "other" joins: its namespace and objects come in.
        await k.patch(url_of(namespaces, "", "other"), json={"metadata": {"labels": LABEL}})
        assert refs(await collector.until(upsert_of("d"))) == [
            ("upsert", "Namespace other"),
            ("upsert", "Pod other/b"),
            ("upsert", "Pod other/d"),
        ]
        # "shop" leaves (label of another mesh): its objects go.
        await k.patch(
            url_of(namespaces, "", "shop"), json={"metadata": {"labels": {LABEL_KEY: "other-mesh"}}}
        )
        assert refs([await collector.next(), await collector.next()]) == [
            ("delete", "Namespace shop"),
            ("delete", "Pod shop/a"),
        ]
        # A deleted mesh namespace takes its objects too.
        await k.delete(url_of(namespaces, "", "other"))
        assert refs([await collector.next() for _ in range(3)]) == [
            ("delete", "Namespace other"),
            ("delete", "Pod other/b"),
            ("delete", "Pod other/d"),
        ]
        assert collector.drain() == []
    finally:
        await stop(task)


async def test_default_client_reads_the_kubeconfig(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mock", "cluster": {"server": str(emulator.url).rstrip("/")}}],
        "users": [{"name": "me", "user": {"token": "secret"}}],
        "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "me"}}],
        "current-context": "mock",
    }
    (tmp_path / "config").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    seed(emulator, namespace("shop"))
    collector = Collector()
    task = asyncio.create_task(KubernetesSource(collector, api_client_factory=default_api_client).run())
    try:
        events = await collector.until(is_synced)
        assert refs(events) == [("upsert", "Namespace shop"), ("synced", "kubernetes")]
        assert set(emulator.authorizations) == {"Bearer secret"}
    finally:
        await stop(task)


async def test_osm_meshconfig_and_osm_labelled_namespaces(emulator: Emulator) -> None:
    """OSM's MeshConfig is read from OSM's own namespace, which is not in the mesh, beside
    meshcp's (same kind, another group); a namespace labelled with OSM's monitored-by joins
    the mesh, and leaves when meshcp's own label says another mesh."""
    k = emulator
    namespaces = BY_KIND["Namespace"]
    osm_config: dict[str, Any] = {
        "apiVersion": "config.openservicemesh.io/v1alpha2",
        "kind": "MeshConfig",
        "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
        "spec": {"traffic": {"enablePermissiveTrafficPolicyMode": True}},
    }
    osm_namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "osm-shop", "labels": {"openservicemesh.io/monitored-by": "meshcp"}},
    }
    seed(
        k,
        osm_namespace,
        namespace("osm-system", labelled=False),
        pod("a", "osm-shop"),
        pod("b", "osm-system"),
    )
    seed(k, SAMPLES["MeshConfig"], osm_config)
    collector = Collector()
    task, _ = await start(str(k.url), collector)
    try:
        events = await collector.until(is_synced)
        assert sorted(refs(events)) == [
            ("synced", "kubernetes"),
            ("upsert", "MeshConfig meshcp"),
            ("upsert", "MeshConfig osm-system/osm-mesh-config"),
            ("upsert", "Namespace osm-shop"),
            ("upsert", "Pod osm-shop/a"),
        ]
        upserts = {e.obj.ref: e.obj for e in events if isinstance(e, Upsert)}
        assert upserts[ObjectRef("MeshConfig", "osm-system", "osm-mesh-config")] == parse_object(osm_config)
        # A change of OSM's MeshConfig is its own object's change.
        osm = OSM_MESH_CONFIG
        osm_config["spec"]["traffic"]["enablePermissiveTrafficPolicyMode"] = False
        await k.patch(url_of(osm, "osm-system", "osm-mesh-config"), json=stored(osm_config))
        assert await collector.next() == Upsert(parse_object(osm_config))
        # meshcp's label, for another mesh, wins over OSM's: the namespace leaves.
        await k.patch(
            url_of(namespaces, "", "osm-shop"), json={"metadata": {"labels": {LABEL_KEY: "other-mesh"}}}
        )
        assert refs([await collector.next(), await collector.next()]) == [
            ("delete", "Namespace osm-shop"),
            ("delete", "Pod osm-shop/a"),
        ]
        await k.delete(url_of(osm, "osm-system", "osm-mesh-config"))
        assert await collector.next() == Delete(ObjectRef("MeshConfig", "osm-system", "osm-mesh-config"))
        assert collector.drain() == []
    finally:
        await stop(task)
