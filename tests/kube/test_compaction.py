"""etcd compaction on the real API server: a watch resumed from a revision etcd has compacted
away gets `410 Gone`, and the Kubernetes source lists again and carries on.

The API server serves watches from its watch cache, whose own window hides etcd's
compaction; the fixture's API server runs ServiceAccounts without one
(`--watch-cache-sizes=serviceaccounts#0`), so their watches are etcd's own, as every watch
is on an API server without a watch cache. The source (in this process, to shorten its
watch streams to 1 s: `timeoutSeconds`, after which it resumes from the last
resourceVersion it saw) follows ServiceAccounts; etcd is compacted past that revision
while it watches; its next resume gets the 410 (an ERROR event, code 410, "too old"),
counted as an `expired` restart, and a ServiceAccount created after that reaches it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from kubernetes_asyncio.client import ApiClient

from meshcp.kube.client import default_api_client
from meshcp.model.core import ServiceAccount
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.sources.events import Delete, Event, Synced, Upsert
from meshcp.sources.kubernetes import KubernetesSource
from meshcp.sources.kubernetes_watch import WatchSettings
from tests.kube.conftest import Installed
from tests.support import eventually

NAMESPACE = "compaction"


class Restarts:
    """The source's WatchObserver: restarts by (kind, reason)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def watch_event(self, kind: str, event_type: str) -> None:
        pass

    def watch_restart(self, kind: str, reason: str) -> None:
        self.counts[(kind, reason)] += 1

    def watch_failing(self, kind: str, failing: bool) -> None:
        pass

    def watch_backoff(self, kind: str, seconds: float) -> None:
        pass


def accounts(events: list[Event]) -> set[str]:
    """The ServiceAccounts of the namespace the source holds after `events`."""
    held: set[str] = set()
    for event in events:
        match event:
            case Upsert(obj=ServiceAccount() as account) if account.meta.namespace == NAMESPACE:
                held.add(account.meta.name)
            case Delete(ref=ref) if ref.kind == "ServiceAccount" and ref.namespace == NAMESPACE:
                held.discard(ref.name)
    return held


async def test_a_watch_past_etcd_compaction_gets_410_and_the_source_lists_again(
    installed: Installed, tmp_path: Path
) -> None:
    kube = installed.api
    kube.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": NAMESPACE, "labels": {MESH_LABEL: "meshcp"}},
            },
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "before", "namespace": NAMESPACE},
            },
        ]
    )
    events: list[Event] = []
    restarts = Restarts()

    async def factory() -> ApiClient:
        return await default_api_client(config_file=str(kube.admin_kubeconfig))

    source = KubernetesSource(
        events.append,
        api_client_factory=factory,
        settings=WatchSettings(timeout_seconds=1),
        observer=restarts,
    )
    task = asyncio.create_task(source.run())
    try:

        async def synced() -> bool:
            return any(isinstance(e, Synced) for e in events) and accounts(events) == {"before"}

        await eventually(synced, timeout=30, what="the source synced with the first ServiceAccount")
        expired = ("ServiceAccount", "expired")
        assert restarts.counts[expired] == 0

        # Past every revision the source has seen; the ServiceAccounts' watch resumes within
        # a second (timeoutSeconds) from one of those.
        kube.compact_etcd()

        async def gone() -> bool:
            return restarts.counts[expired] >= 1

        await eventually(gone, timeout=30, what="a 410 on the ServiceAccounts' watch")

        kube.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "after", "namespace": NAMESPACE},
                }
            ]
        )

        async def both() -> bool:
            return accounts(events) == {"before", "after"}

        await eventually(both, timeout=30, what="the ServiceAccount created after the 410")
        # Only the compacted kind was affected: the others' watches are the cache's.
        assert {kind for kind, reason in restarts.counts if reason == "expired"} == {"ServiceAccount"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
