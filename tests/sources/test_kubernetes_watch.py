"""How the Kubernetes source lists and watches (meshcp.sources.kubernetes_watch), against
kmock's emulator of the API server (real HTTP): paginated lists, relists after `410 Gone`
and lost connections that emit only differences, bookmarks, read timeouts, an API server
that is not there yet, and kinds it does not serve."""

from __future__ import annotations

import asyncio
import logging

import kmock
import pytest

from meshcp.model.parse import parse_object
from meshcp.sources.events import Synced, Upsert
from meshcp.sources.kubernetes import RESOURCES
from meshcp.sources.kubernetes_watch import WatchSettings
from meshcp.telemetry.metrics import Metrics
from tests.sources.kube_fixtures import Emulator, status_410
from tests.sources.kube_objects import BY_KIND, SAMPLES, key, namespace, pod, seed, stored, url_of
from tests.sources.kube_source import (
    Collector,
    Sleeps,
    is_synced,
    refs,
    start,
    stop,
    upsert_of,
    wait_watches,
)
from tests.support import eventually, free_port


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


async def test_unreachable_api_server_retries_until_it_answers(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    collector = Collector()
    sleeps = Sleeps()
    sleeps.gate = asyncio.Event()
    with caplog.at_level(logging.DEBUG, "meshcp.sources.kubernetes"):
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
                assert "HTTP 503: the server is not ready" in caplog.text  # a debug line
                # One error line per kind when it starts failing: the retries after it are
                # debug lines.
                errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
                assert len(errors) == len(RESOURCES), [r.getMessage() for r in errors]
                assert "works again" in caplog.text
                assert sleeps.waits[:2] == [0.5, 0.5] and max(sleeps.waits) > 0.5  # backoff grows
                await stop(task)
        finally:
            if not task.done():
                await stop(task)
    assert "Traceback" not in caplog.text


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


async def test_watch_events_and_restarts_are_counted_by_kind(emulator: Emulator) -> None:
    k = emulator
    pods = BY_KIND["Pod"]
    seed(k, namespace("shop"))
    metrics = Metrics()
    collector = Collector()
    task, _ = await start(str(k.url), collector, observer=metrics)
    try:
        await collector.until(is_synced)
        await wait_watches(k, pods, 1)
        await k.post(url_of(pods, "shop"), json=stored(pod("web")))
        await collector.until(upsert_of("web"))
        await k.inject(key(pods), status_410())
        await wait_watches(k, pods, 2)
    finally:
        await stop(task)
    value = metrics.registry.get_sample_value
    assert value("meshcp_kubernetes_watch_events_total", {"kind": "Pod", "type": "ADDED"}) == 1
    assert value("meshcp_kubernetes_watch_restarts_total", {"kind": "Pod", "reason": "expired"}) == 1
    assert value("meshcp_kubernetes_watch_restarts_total", {"kind": "Service", "reason": "expired"}) is None


async def test_an_error_after_one_410_recovers_once_a_watch_opens(emulator: Emulator) -> None:
    """One 410 is routine: it does not make the kind wait for a watch event to count as
    following again. A dropped watch after it fails the kind; the next watch stream that
    opens ends that, as after any error (only a streak of 410s waits for progress)."""
    k = emulator
    pods = BY_KIND["Pod"]
    seed(k, namespace("shop"))
    metrics = Metrics()
    collector = Collector()
    sleeps = Sleeps()
    sleeps.gate = asyncio.Event()
    task, _ = await start(str(k.url), collector, sleeps, observer=metrics)
    failing = {"kind": "Pod"}
    try:
        await collector.until(is_synced)
        await wait_watches(k, pods, 1)
        await k.inject(key(pods), status_410())
        await wait_watches(k, pods, 2)  # listed again at once, no wait
        assert sleeps.waits == []
        await k.drop_watches(url_of(pods), key(pods))
        await sleeps.wait_for(1)
        assert metrics.registry.get_sample_value("meshcp_kubernetes_watch_failing", failing) == 1
        sleeps.gate.set()
        await wait_watches(k, pods, 3)

        async def following() -> bool:
            return metrics.registry.get_sample_value("meshcp_kubernetes_watch_failing", failing) == 0

        await eventually(following, timeout=10, what="the Pod watch to count as following again")
    finally:
        await stop(task)
