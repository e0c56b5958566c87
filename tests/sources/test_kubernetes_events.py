"""Warning events on skipped objects, posted to a real local Kubernetes API mock (kmock)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from typing import Any

import kmock
from kubernetes_asyncio.client import ApiClient, Configuration

from meshcp.model.meta import ObjectRef
from meshcp.model.state import Problem
from meshcp.sources.kubernetes_events import REASON, EventRecorder, event_for
from tests.sources.kube_fixtures import Emulator

TARGET = ObjectRef("TrafficTarget", "bookstore", "bookthief-allowed")
PROBLEM = Problem(TARGET, "HTTPRouteGroup bookstore/nope does not exist; rule skipped")


def test_event_names_the_object_and_the_reason() -> None:
    now = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
    event = event_for(PROBLEM, now)
    assert event is not None
    assert event.involved_object.api_version == "access.smi-spec.io/v1alpha3"
    assert (event.involved_object.kind, event.involved_object.namespace) == ("TrafficTarget", "bookstore")
    assert (event.reason, event.type, event.message) == (REASON, "Warning", PROBLEM.reason)
    # The same problem gives the same event name: posting it twice is a harmless conflict.
    again = event_for(PROBLEM, now)
    assert again is not None and again.metadata.name == event.metadata.name
    # Problems of files (not API objects) have no object to attach an event to.
    assert event_for(Problem(ObjectRef("File", "", "smi.yaml"), "bad YAML"), now) is None


async def test_recorder_posts_one_event_per_problem() -> None:
    async with Emulator() as k, kmock.Server(k):
        k.declare("v1/events")

        async def factory() -> ApiClient:
            return ApiClient(Configuration(host=str(k.url)))

        recorder = EventRecorder(factory)
        task = asyncio.create_task(recorder.run())
        try:
            recorder.report(PROBLEM)
            recorder.report(PROBLEM)  # already posted: a 409, not a second event
            recorder.report(Problem(ObjectRef("Document", "", "x.yaml:3"), "no kind"))
            async with asyncio.timeout(10):
                await recorder.drain()
            assert recorder.posted >= 1
            (event,) = _events(k)
            assert event["reason"] == REASON
            assert event["involvedObject"]["name"] == "bookthief-allowed"
            assert event["message"] == PROBLEM.reason
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _events(k: Emulator) -> list[dict[str, Any]]:
    return [dict(obj) for key, obj in k.objects.items() if key[0] == "v1/events"]
