"""Collecting the bootstrap Secrets of pods that are gone, against a local Kubernetes API mock
(kmock): never a Secret whose pod exists or may still come, never one the injector did not
make, and every one whose pod has been gone for the grace period."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api

from meshcp.injector.bootstrap_secret import MANAGED_BY, MANAGED_BY_LABEL
from meshcp.policy.membership import PROXY_UUID_LABEL
from meshcp.runtime.controller import ControllerRuntime
from meshcp.sources.bootstrap_secrets import BootstrapSecret, CollectorSettings, SecretCollector, due
from meshcp.sources.kubernetes import RESOURCES
from tests.sources.kube_fixtures import Emulator, kube_settings
from tests.sources.kube_objects import key
from tests.support import eventually

GRACE = 600.0
SECRETS = "v1/secrets"
PODS = "v1/pods"


def secret(name: str, proxy_uuid: str | None, ns: str = "shop", *, managed: bool = True) -> dict[str, Any]:
    labels = {MANAGED_BY_LABEL: MANAGED_BY} if managed else {}
    if proxy_uuid is not None:
        labels[PROXY_UUID_LABEL] = proxy_uuid
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{name}"},
        "data": {"xds-client.key": "a2V5"},
    }


def pod(name: str, proxy_uuid: str, ns: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {PROXY_UUID_LABEL: proxy_uuid}},
        "spec": {"containers": [{"name": "app"}]},
    }


def _names(k: Emulator) -> set[str]:
    return {
        f"{ns}/{name}" for (kind, ns, name), obj in k.objects.items() if kind == SECRETS and not obj.deleted
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api() -> AsyncIterator[Emulator]:
    async with Emulator() as k, kmock.Server(k):
        k.declare(SECRETS, PODS)
        yield k


def _factory(k: Emulator) -> Any:
    async def factory() -> ApiClient:
        return ApiClient(Configuration(host=str(k.url)))

    return factory


def test_a_secret_is_due_once_it_has_been_seen_without_its_pod_for_the_grace_period() -> None:
    gone = BootstrapSecret("shop", "meshcp-bootstrap-a", "u1", "1", "a")
    kept = BootstrapSecret("shop", "meshcp-bootstrap-b", "u2", "1", "b")
    first, seen = due([gone, kept], {"b"}, {}, now=0.0, grace=GRACE)
    assert first == [] and seen == {"shop/meshcp-bootstrap-a": 0.0}
    almost, seen = due([gone, kept], {"b"}, seen, now=GRACE - 1, grace=GRACE)
    assert almost == [] and seen == {"shop/meshcp-bootstrap-a": 0.0}
    now, _ = due([gone, kept], {"b"}, seen, now=GRACE, grace=GRACE)
    assert now == [gone]
    # Its pod appeared meanwhile (admitted, then stored): forgotten, the count starts over.
    back, seen = due([gone], {"a"}, seen, now=GRACE, grace=GRACE)
    assert back == [] and seen == {}


async def test_collects_only_the_injectors_secrets_of_pods_gone_for_the_grace_period(api: Emulator) -> None:
    k = api
    k.objects[SECRETS, "shop", "meshcp-bootstrap-live"] = secret("meshcp-bootstrap-live", "live")
    k.objects[PODS, "shop", "web-1"] = pod("web-1", "live")
    k.objects[SECRETS, "shop", "meshcp-bootstrap-gone"] = secret("meshcp-bootstrap-gone", "gone")
    k.objects[SECRETS, "other", "meshcp-bootstrap-gone2"] = secret("meshcp-bootstrap-gone2", "gone2", "other")
    # Admitted, its pod not stored yet when the first pass runs.
    k.objects[SECRETS, "shop", "meshcp-bootstrap-coming"] = secret("meshcp-bootstrap-coming", "coming")
    # Not the injector's: a UUID label alone, or no UUID.
    k.objects[SECRETS, "shop", "lookalike"] = secret("lookalike", "gone", managed=False)
    k.objects[SECRETS, "shop", "unlabelled"] = secret("unlabelled", None)
    clock = Clock()
    collector = SecretCollector(_factory(k), CollectorSettings(grace=GRACE, page_size=2), clock=clock)
    async with await _factory(k)() as client:
        core = CoreV1Api(client)
        assert await collector.collect(core) == []
        k.objects[PODS, "shop", "web-2"] = pod("web-2", "coming")
        clock.now += GRACE - 1
        assert await collector.collect(core) == []
        clock.now += 1
        deleted = await collector.collect(core)
        assert {f"{s.namespace}/{s.name}" for s in deleted} == {
            "shop/meshcp-bootstrap-gone",
            "other/meshcp-bootstrap-gone2",
        }
        assert _names(k) == {
            "shop/meshcp-bootstrap-live",
            "shop/meshcp-bootstrap-coming",
            "shop/lookalike",
            "shop/unlabelled",
        }
        # The pod of "live" is deleted: its Secret goes one grace period later, not before.
        del k.objects[PODS, "shop", "web-1"]
        assert await collector.collect(core) == []
        clock.now += GRACE
        (last,) = await collector.collect(core)
        assert last.name == "meshcp-bootstrap-live"
        assert "shop/meshcp-bootstrap-live" not in _names(k)
        assert collector.collected == 3


async def test_a_replica_that_does_not_lead_deletes_nothing(api: Emulator) -> None:
    """HA: only the leader collects (asked before each deletion); the same pass as leader
    deletes them."""
    k = api
    for name in ("a", "b"):
        k.objects[SECRETS, "shop", f"meshcp-bootstrap-{name}"] = secret(f"meshcp-bootstrap-{name}", name)
    leads = [False]
    settings = CollectorSettings(grace=0)
    collector = SecretCollector(_factory(k), settings, leading=lambda: leads[0])
    async with await _factory(k)() as client:
        core = CoreV1Api(client)
        assert await collector.collect(core) == []
        assert len(_names(k)) == 2
        leads[0] = True
        assert len(await collector.collect(core)) == 2
        assert _names(k) == set()


async def test_run_keeps_collecting_through_api_failures(api: Emulator) -> None:
    k = api
    k.objects[SECRETS, "shop", "meshcp-bootstrap-gone"] = secret("meshcp-bootstrap-gone", "gone")
    k.fail_next = 3  # the API server is not ready for the first passes
    collector = SecretCollector(_factory(k), CollectorSettings(interval=0.01, grace=0))
    task = asyncio.create_task(collector.run())
    try:

        async def collected() -> bool:
            return "shop/meshcp-bootstrap-gone" not in _names(k)

        await eventually(collected, 10, "the Secret to be collected")
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert collector.collected == 1


async def test_the_controller_collects_with_the_kubernetes_source(tmp_path: Path) -> None:
    """Wired as one of `serve --source kubernetes`'s parts."""
    async with Emulator() as k, kmock.Server(k):
        k.declare(*(key(resource) for resource in RESOURCES), SECRETS)
        k.objects[SECRETS, "shop", "meshcp-bootstrap-gone"] = secret("meshcp-bootstrap-gone", "gone")
        settings = kube_settings(
            tmp_path,
            str(k.url),
            secret_collection=CollectorSettings(interval=0.05, grace=0),
        )
        runtime = await ControllerRuntime.open(settings)
        async with runtime:

            async def collected() -> bool:
                return "shop/meshcp-bootstrap-gone" not in _names(k)

            await eventually(collected, 10, "the controller to collect the Secret")
