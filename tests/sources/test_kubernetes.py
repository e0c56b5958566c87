"""The Kubernetes source against kmock's emulator of the API server (real HTTP)."""

from __future__ import annotations

import ast
import asyncio
import copy
import importlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient, Configuration

from meshcp.kube.client import default_api_client
from meshcp.model.meta import ObjectRef
from meshcp.model.parse import parse_object
from meshcp.sources.events import Delete, Event, Invalid, Resolved, Synced, Upsert
from meshcp.sources.kubernetes import RESOURCES, KubernetesSource
from meshcp.sources.kubernetes_rbac import CLIENT_RULES, RULES, SOURCE_RULES, Rule, render
from meshcp.sources.kubernetes_watch import Resource, WatchSettings
from tests.sources.kube_fixtures import NAMESPACES, Emulator, status_410

TIMEOUT = 10.0
LABEL = {"meshcp.dev/monitored-by": "meshcp"}
BY_KIND = {resource.kind: resource for resource in RESOURCES}


def key(resource: Resource) -> str:
    if resource.kind == "Namespace":
        return NAMESPACES
    return f"{resource.api_version}/{resource.plural}"


def url_of(resource: Resource, namespace: str = "", name: str = "") -> str:
    prefix = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
    path = prefix + (f"/namespaces/{namespace}" if namespace and resource.namespaced else "")
    return f"{path}/{resource.plural}" + (f"/{name}" if name else "")


def namespace(name: str, *, labelled: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": LABEL if labelled else {}},
    }


def pod(name: str, ns: str = "shop", ip: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "web"}]},
        "status": {"podIP": ip},
    }


def service(name: str, ns: str = "shop", port: Any = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": port}]},
    }


#: One valid manifest of every watched kind (in the mesh namespace "shop").
SAMPLES: dict[str, dict[str, Any]] = {
    "Namespace": namespace("shop"),
    "Service": service("web"),
    "Pod": pod("web-0"),
    "ServiceAccount": {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "web", "namespace": "shop"},
    },
    "EndpointSlice": {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}],
        "ports": [{"name": "http", "port": 80}],
    },
    "TrafficTarget": yaml.safe_load(
        """
        apiVersion: access.smi-spec.io/v1alpha3
        kind: TrafficTarget
        metadata: {name: web, namespace: shop}
        spec:
          destination: {kind: ServiceAccount, name: web, namespace: shop}
          rules: [{kind: HTTPRouteGroup, name: routes}]
          sources: [{kind: ServiceAccount, name: client, namespace: shop}]
        """
    ),
    "HTTPRouteGroup": {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "routes", "namespace": "shop"},
        "spec": {"matches": [{"name": "all", "pathRegex": "/", "methods": ["*"]}]},
    },
    "TCPRoute": {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "TCPRoute",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"matches": {"ports": [5432]}},
    },
    "UDPRoute": {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "UDPRoute",
        "metadata": {"name": "dns", "namespace": "shop"},
        "spec": {"matches": {"ports": [53]}},
    },
    "TrafficSplit": {
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": 1}]},
    },
    "MeshConfig": {
        "apiVersion": "config.meshcp.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "meshcp"},
        "spec": {"permissive": False},
    },
}
#: A change of each sample that changes its model object.
CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "Namespace": lambda m: m["metadata"]["labels"].update(team="a"),
    "Service": lambda m: m["spec"]["ports"][0].update(port=8080),
    "Pod": lambda m: m["status"].update(podIP="10.0.0.9"),
    "ServiceAccount": lambda m: m["metadata"].update(labels={"team": "a"}),
    "EndpointSlice": lambda m: m["endpoints"][0].update(addresses=["10.0.0.9"]),
    "TrafficTarget": lambda m: m["spec"]["sources"][0].update(name="other"),
    "HTTPRouteGroup": lambda m: m["spec"]["matches"][0].update(pathRegex="/api"),
    "TCPRoute": lambda m: m["spec"]["matches"].update(ports=[5433]),
    "UDPRoute": lambda m: m["spec"]["matches"].update(ports=[54]),
    "TrafficSplit": lambda m: m["spec"]["backends"][0].update(weight=2),
    "MeshConfig": lambda m: m["spec"].update(permissive=True),
}


def stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a real API server keeps: list items and watch objects without kind/apiVersion
    (lists drop them; keeping them out also shows the source does not need them)."""
    return {k: v for k, v in manifest.items() if k not in ("kind", "apiVersion")}


def seed(k: Emulator, *manifests: dict[str, Any]) -> None:
    for manifest in manifests:
        resource = BY_KIND[manifest["kind"]]
        meta = manifest["metadata"]
        k.objects[key(resource), meta.get("namespace") if resource.namespaced else None, meta["name"]] = (
            stored(manifest)
        )


class Collector:
    """The emit callback: events into a queue, taken with timeouts."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> Event:
        async with asyncio.timeout(TIMEOUT):
            return await self.queue.get()

    async def until(self, predicate: Callable[[Event], bool]) -> list[Event]:
        """Every event up to and including the first that matches."""
        events: list[Event] = []
        while True:
            event = await self.next()
            events.append(event)
            if predicate(event):
                return events

    def drain(self) -> list[Event]:
        events = []
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events


def is_synced(event: Event) -> bool:
    return isinstance(event, Synced)


def upsert_of(name: str) -> Callable[[Event], bool]:
    return lambda event: isinstance(event, Upsert) and event.obj.ref.name == name


class Sleeps:
    """The source's backoff sleep: records each wait; a test may hold the next one."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.called = asyncio.Condition()
        self.gate: asyncio.Event | None = None

    async def __call__(self, seconds: float) -> None:
        async with self.called:
            self.waits.append(seconds)
            self.called.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT), self.called:
            await self.called.wait_for(lambda: len(self.waits) >= count)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator() as k, kmock.Server(k):
        k.declare(*(key(resource) for resource in RESOURCES))
        yield k


async def start(
    host: str, collector: Collector, sleeps: Sleeps | None = None, settings: WatchSettings | None = None
) -> tuple[asyncio.Task[None], Sleeps]:
    sleeps = sleeps or Sleeps()

    async def factory() -> ApiClient:
        return ApiClient(Configuration(host=host))

    source = KubernetesSource(
        collector, api_client_factory=factory, sleep=sleeps, settings=settings or WatchSettings(page_size=2)
    )
    return asyncio.create_task(source.run()), sleeps


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def wait_watches(k: Emulator, resource: Resource, count: int) -> None:
    """Until `count` watch requests of `resource` have arrived (the source lists and emits
    synchronously before each watch request, so everything of that list has been emitted)."""
    async with asyncio.timeout(TIMEOUT):
        await k.wait_watches(url_of(resource), count)


def refs(events: list[Event]) -> list[tuple[str, str]]:
    out = []
    for event in events:
        match event:
            case Upsert(obj=obj):
                out.append(("upsert", str(obj.ref)))
            case Delete(ref=ref):
                out.append(("delete", str(ref)))
            case Invalid(problem=problem):
                out.append(("invalid", str(problem.ref)))
            case Resolved(ref=ref):
                out.append(("resolved", str(ref)))
            case Synced(source=name):
                out.append(("synced", name))
    return out


# --- tests -----------------------------------------------------------------------------


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


async def test_initial_list_is_paginated_and_synced_once(emulator: Emulator) -> None:
    k = emulator
    pods = [pod(f"web-{i}", ip=f"10.0.0.{i + 1}") for i in range(5)]
    seed(k, namespace("shop"), *pods, *[v for kind, v in SAMPLES.items() if kind not in ("Namespace", "Pod")])
    collector = Collector()
    task, _ = await start(str(k.url), collector)
    try:
        events = await collector.until(is_synced)
        upserts = {event.obj.ref for event in events if isinstance(event, Upsert)}
        expected = {
            parse_object(m).ref for m in [namespace("shop"), *pods, *SAMPLES.values()] if m["kind"] != "Pod"
        }
        expected |= {parse_object(m).ref for m in pods}
        assert upserts == expected
        assert len(events) == len(expected) + 1 and events[-1] == Synced("kubernetes")
        pod_lists = [query for path, query in k.list_requests if path == url_of(BY_KIND["Pod"])]
        assert [(q.get("limit"), q.get("continue")) for q in pod_lists] == [
            ("2", None),
            ("2", "2"),
            ("2", "4"),
        ]
        # A later relist does not emit Synced again.
        await wait_watches(k, BY_KIND["Pod"], 1)
        await k.inject(key(BY_KIND["Pod"]), status_410())
        await wait_watches(k, BY_KIND["Pod"], 2)
        await k.post(url_of(BY_KIND["Pod"], "shop"), json=stored(pod("zz-marker")))
        assert refs(await collector.until(upsert_of("zz-marker"))) == [("upsert", "Pod shop/zz-marker")]
    finally:
        await stop(task)


async def test_410_relists_and_emits_only_differences(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    k = emulator
    pods = BY_KIND["Pod"]
    seed(k, namespace("shop"), pod("gone"), pod("kept"), pod("changed"))
    collector = Collector()
    task, _ = await start(str(k.url), collector)
    try:
        await collector.until(is_synced)
        await wait_watches(k, pods, 1)
        # Bookmarks and unknown event types change nothing.
        await k.inject(key(pods), {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "77"}}})
        with caplog.at_level(logging.WARNING, "meshcp.sources.kubernetes"):
            await k.inject(key(pods), {"type": "SURPRISE", "object": {}})
            # Changes the watch does not see (as if they happened while it was behind).
            del k.objects[key(pods), "shop", "gone"]
            k.objects[key(pods), "shop", "changed"] = stored(pod("changed", ip="10.0.0.7"))
            k.objects[key(pods), "shop", "new"] = stored(pod("new"))
            await k.inject(key(pods), status_410())
            await wait_watches(k, pods, 2)
        assert "unknown type 'SURPRISE'" in caplog.text
        # The resumed watch only streamed from the bookmark's version.
        watch_versions = [query.get("resourceVersion") for _, query in k.watch_requests]
        assert "77" not in watch_versions  # the 410 forced a relist: the watch resumes from the list
        await k.post(url_of(pods, "shop"), json=stored(pod("zz-marker")))
        events = await collector.until(upsert_of("zz-marker"))
        assert refs(events) == [
            ("upsert", "Pod shop/changed"),
            ("delete", "Pod shop/gone"),
            ("upsert", "Pod shop/new"),
            ("upsert", "Pod shop/zz-marker"),
        ]
        assert events[0] == Upsert(parse_object(pod("changed", ip="10.0.0.7")))
    finally:
        await stop(task)


async def test_connection_drop_resyncs_without_loss_or_duplicates(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    k = emulator
    pods = BY_KIND["Pod"]
    seed(k, namespace("shop"), pod("gone"), pod("kept"), pod("changed"))
    collector = Collector()
    sleeps = Sleeps()
    sleeps.gate = asyncio.Event()
    task, _ = await start(str(k.url), collector, sleeps)
    try:
        await collector.until(is_synced)
        await wait_watches(k, pods, 1)
        await k.drop_watches(url_of(pods), key(pods))
        await sleeps.wait_for(1)  # the source noticed, and waits to reconnect
        assert "watching pods failed: Response payload is not completed" in caplog.text
        del k.objects[key(pods), "shop", "gone"]
        k.objects[key(pods), "shop", "changed"] = stored(pod("changed", ip="10.0.0.7"))
        k.objects[key(pods), "shop", "new"] = stored(pod("new"))
        sleeps.gate.set()
        await wait_watches(k, pods, 2)
        await k.post(url_of(pods, "shop"), json=stored(pod("zz-marker")))
        events = await collector.until(upsert_of("zz-marker"))
        assert refs(events) == [
            ("upsert", "Pod shop/changed"),
            ("delete", "Pod shop/gone"),
            ("upsert", "Pod shop/new"),
            ("upsert", "Pod shop/zz-marker"),
        ]
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_unreachable_api_server_retries_until_it_answers(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    collector = Collector()
    sleeps = Sleeps()
    sleeps.gate = asyncio.Event()
    with caplog.at_level(logging.INFO, "meshcp.sources.kubernetes"):
        task, _ = await start(f"http://127.0.0.1:{port}", collector, sleeps)
        try:
            await sleeps.wait_for(len(RESOURCES))
            assert collector.drain() == []
            assert "Traceback" not in caplog.text
            assert (
                f"Kubernetes API http://127.0.0.1:{port}: listing pods failed: Cannot connect" in caplog.text
            )
            async with Emulator() as k, kmock.Server(k, port=port):
                k.declare(*(key(resource) for resource in RESOURCES))
                seed(k, namespace("shop"), pod("web-0"))
                k.fail_next = 3  # up, but not ready yet
                sleeps.gate.set()
                events = await collector.until(is_synced)
                assert refs(events) == [
                    ("upsert", "Namespace shop"),
                    ("upsert", "Pod shop/web-0"),
                    ("synced", "kubernetes"),
                ]
                assert "HTTP 503: the server is not ready" in caplog.text
                assert "works again" in caplog.text
                assert sleeps.waits[:2] == [0.5, 0.5] and max(sleeps.waits) > 0.5  # backoff grows
                await stop(task)
        finally:
            if not task.done():
                await stop(task)
    assert "Traceback" not in caplog.text


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
        lists = [q for path, q in k.list_requests if path == url_of(namespaces)]
        assert lists[0]["labelSelector"] == "meshcp.dev/monitored-by=meshcp"
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


LABEL_KEY = "meshcp.dev/monitored-by"


async def test_watch_resumes_from_the_last_bookmark_after_a_clean_end(emulator: Emulator) -> None:
    k = emulator
    pods = BY_KIND["Pod"]
    seed(k, namespace("shop"), pod("a"))
    collector = Collector()
    task, sleeps = await start(str(k.url), collector, settings=WatchSettings(timeout_seconds=42))
    try:
        await collector.until(is_synced)
        await wait_watches(k, pods, 1)
        await k.inject(key(pods), {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "77"}}})
        await k.end_watches(key(pods))
        await wait_watches(k, pods, 2)
        first, second = [query for path, query in k.watch_requests if path == url_of(pods)]
        assert first["timeoutSeconds"] == "42" and first["allowWatchBookmarks"] in ("True", "true")
        assert second["resourceVersion"] == "77"
        # No relist, no error, nothing emitted.
        assert sum(path == url_of(pods) for path, _ in k.list_requests) == 1
        assert sleeps.waits == [] and collector.drain() == []
    finally:
        await stop(task)


async def test_a_silent_watch_is_abandoned_after_the_read_timeout(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    k = emulator
    seed(k, namespace("shop"), pod("a"))
    collector = Collector()
    with caplog.at_level(logging.ERROR, "meshcp.sources.kubernetes"):
        task, sleeps = await start(str(k.url), collector, settings=WatchSettings(read_timeout=0.2))
        try:
            await collector.until(is_synced)
            await sleeps.wait_for(1)
            assert "failed: no data for 0.2s" in caplog.text
            await wait_watches(k, BY_KIND["Pod"], 2)  # listed again, watching again
            assert collector.drain() == []  # nothing changed, nothing emitted
        finally:
            await stop(task)


# --- RBAC ------------------------------------------------------------------------------


def _granted(rules: Iterable[Rule]) -> set[tuple[str, str, str]]:
    return {
        (group, plural, verb)
        for rule in rules
        for group in rule.api_groups
        for plural in rule.resources
        for verb in rule.verbs
    }


def test_rbac_rules_cover_exactly_what_the_source_watches() -> None:
    needed = {(r.group, r.plural, verb) for r in RESOURCES for verb in ("list", "watch")}
    assert _granted(SOURCE_RULES) == needed
    assert _granted(RULES) == needed | _granted(CLIENT_RULES.values())


#: kubernetes_asyncio methods our clients call → (API group, resource, RBAC verb).
_API_CALLS = {
    "create_namespaced_event": ("", "events", "create"),
    "read_namespaced_secret": ("", "secrets", "get"),
    "create_namespaced_secret": ("", "secrets", "create"),
    "replace_namespaced_secret": ("", "secrets", "update"),
    "create_namespaced_custom_object": ("cert-manager.io", "certificaterequests", "create"),
    "get_namespaced_custom_object": ("cert-manager.io", "certificaterequests", "get"),
    "delete_namespaced_custom_object": ("cert-manager.io", "certificaterequests", "delete"),
}


@pytest.mark.parametrize("module", sorted(CLIENT_RULES))
def test_rbac_rules_match_what_each_client_module_calls(module: str) -> None:
    source = Path(importlib.import_module(module).__file__ or "").read_text()
    called = {
        node.func.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    api_calls = {
        name
        for name in called
        if name.endswith(("_namespaced_secret", "_namespaced_event", "_custom_object"))
    }
    assert api_calls <= _API_CALLS.keys(), f"map these calls to RBAC verbs: {api_calls - _API_CALLS.keys()}"
    assert {_API_CALLS[name] for name in api_calls} == _granted([CLIENT_RULES[module]])


def test_deployed_cluster_role_matches_the_rules() -> None:
    path = Path(__file__).parents[2] / "deploy" / "rbac.yaml"
    assert path.read_text() == render(), (
        "regenerate: python -m meshcp.sources.kubernetes_rbac > deploy/rbac.yaml"
    )


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


async def test_kinds_the_server_does_not_serve_do_not_block_sync(caplog: pytest.LogCaptureFixture) -> None:
    async with Emulator() as k, kmock.Server(k):
        k.declare(*(key(resource) for resource in RESOURCES if resource.group != "specs.smi-spec.io"))
        seed(k, namespace("shop"))
        collector = Collector()
        with caplog.at_level(logging.WARNING, "meshcp.sources.kubernetes"):
            sleeps = Sleeps()
            sleeps.gate = asyncio.Event()  # held: one look per kind is enough here
            task, _ = await start(str(k.url), collector, sleeps)
            try:
                events = await collector.until(is_synced)
                assert refs(events) == [("upsert", "Namespace shop"), ("synced", "kubernetes")]
                missing = "does not serve specs.smi-spec.io/v1alpha4/tcproutes (is its CRD installed?)"
                assert missing in caplog.text
                await sleeps.wait_for(3)
                assert set(sleeps.waits) == {30.0}
            finally:
                await stop(task)
