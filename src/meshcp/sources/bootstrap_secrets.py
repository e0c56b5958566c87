"""Collecting the bootstrap Secrets of pods that are gone: each holds a proxy's xDS client key.

The injector creates a pod's bootstrap Secret at admission, before the pod is stored: the
pod has no uid yet, so the Secret cannot name it as its owner, and Kubernetes' garbage
collector never removes it. The controller collects them instead (`SecretCollector`,
one of its parts with `--source kubernetes`): every `interval`, it lists the Secrets the
injector made (by their labels) and then the pods carrying a proxy UUID, and deletes a
Secret once no pod has carried its UUID for `grace`.

Why it is safe:
- `grace` is counted on the controller's own clock, from the first pass that saw the
  Secret without its pod, never from the Secret's timestamp (another machine's clock). A
  Secret is made a moment before its pod is stored, so a young Secret without a pod is a
  pod on its way; `grace` is far longer than any admission (the API server gives each
  webhook 30 s at most). A controller that restarts starts counting again.
- Secrets are listed before pods: a pod stored after the Secret list is in the pod list.
- Only Secrets carrying both the injector's `managed-by` label and a proxy UUID are
  judged, whatever the API server's label selector answered.
- Each delete is conditional on the Secret's uid and resourceVersion: a Secret changed or
  recreated under the same name since the list is not the one judged. Several controller
  replicas collecting at once only meet 404s and 409s, which are not errors.

What a leaked key is worth once its pod is gone: the controller serves a proxy only the
configuration of the pod its node id's UUID names (`runtime.classify`), so the key of a
pod that no longer exists is answered with nothing; collecting the Secret removes the key
itself from the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from meshcp.injector.bootstrap_secret import MANAGED_BY, MANAGED_BY_LABEL
from meshcp.kube.client import ApiClientFactory, all_pages, describe_api_error

if TYPE_CHECKING:
    from kubernetes_asyncio.client import CoreV1Api
from meshcp.policy.membership import PROXY_UUID_LABEL

log = logging.getLogger("meshcp.kubernetes.secrets")

#: The Secrets the injector made for a proxy (the server filters; `BootstrapSecret.read` again).
SECRET_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{PROXY_UUID_LABEL}"


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """How bootstrap Secrets are collected."""

    #: Seconds between two passes.
    interval: float = 300.0
    #: Seconds a Secret must have been seen without its pod before it is deleted.
    grace: float = 600.0
    #: Objects per list page (`limit`); the server hands a `continue` token for the rest.
    page_size: int = 500
    #: Seconds one API request may take.
    request_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class BootstrapSecret:
    """What the collector needs of a bootstrap Secret (never its data)."""

    namespace: str
    name: str
    uid: str | None
    resource_version: str | None
    proxy_uuid: str

    @classmethod
    def read(cls, secret: Any) -> BootstrapSecret | None:
        """The Secret, if the injector made it for a proxy (both labels), else None."""
        metadata = secret.metadata
        labels = (metadata.labels if metadata is not None else None) or {}
        proxy_uuid = labels.get(PROXY_UUID_LABEL)
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or not proxy_uuid:
            return None
        return cls(metadata.namespace, metadata.name, metadata.uid, metadata.resource_version, proxy_uuid)


def due(
    secrets: Iterable[BootstrapSecret],
    pod_uuids: set[str],
    first_seen: Mapping[str, float],
    now: float,
    grace: float,
) -> tuple[list[BootstrapSecret], dict[str, float]]:
    """The Secrets to delete now, and when each Secret without a pod (by namespace/name)
    was first seen so (Secrets whose pod exists are forgotten)."""
    to_delete: list[BootstrapSecret] = []
    seen: dict[str, float] = {}
    for secret in secrets:
        if secret.proxy_uuid in pod_uuids:
            continue
        key = f"{secret.namespace}/{secret.name}"
        since = seen[key] = first_seen.get(key, now)
        if now - since >= grace:
            to_delete.append(secret)
    return to_delete, seen


class SecretCollector:
    """Deletes the bootstrap Secrets of pods that are gone; see the module's docstring."""

    def __init__(
        self,
        api_client_factory: ApiClientFactory,
        settings: CollectorSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        """`leading`: whether this replica leads; only the leader collects (two replicas
        deleting the same Secrets would only race each other)."""
        self._factory = api_client_factory
        self._leading = leading
        self._settings = settings or CollectorSettings()
        self._clock = clock
        self._first_seen: dict[str, float] = {}
        #: Secrets deleted so far.
        self.collected = 0

    async def run(self) -> None:
        """Collect every `interval` until cancelled. A pass that fails (the API unreachable,
        permission missing) is one warning; the next pass tries again."""
        # Imported here, as in meshcp.kube.client: only a controller that collects pays for it.
        from kubernetes_asyncio.client import CoreV1Api
        from kubernetes_asyncio.client.rest import ApiException

        async with await self._factory() as api_client:
            core = CoreV1Api(api_client)
            while True:
                try:
                    if self._leading():
                        await self.collect(core)
                except ApiException as error:
                    log.warning("cannot collect bootstrap Secrets: %s", describe_api_error(error))
                except (aiohttp.ClientError, TimeoutError, OSError) as error:
                    log.warning("cannot collect bootstrap Secrets: %r", error)
                await asyncio.sleep(self._settings.interval)

    async def collect(self, core: CoreV1Api) -> list[BootstrapSecret]:
        """One pass; the Secrets it deleted."""
        listed = await self._pages(
            lambda page: core.list_secret_for_all_namespaces(label_selector=SECRET_SELECTOR, **page)
        )
        secrets = [found for item in listed if (found := BootstrapSecret.read(item)) is not None]
        pods = await self._pages(
            lambda page: core.list_pod_for_all_namespaces(label_selector=PROXY_UUID_LABEL, **page)
        )
        uuids = {uuid for pod in pods if (uuid := (pod.metadata.labels or {}).get(PROXY_UUID_LABEL))}
        grace = self._settings.grace
        to_delete, self._first_seen = due(secrets, uuids, self._first_seen, self._clock(), grace)
        deleted = []
        for secret in to_delete:
            if await self._delete(core, secret):
                deleted.append(secret)
                self.collected += 1
                log.info(
                    "deleted bootstrap Secret %s/%s: no pod has carried proxy UUID %s for %.0f s",
                    secret.namespace,
                    secret.name,
                    secret.proxy_uuid,
                    grace,
                )
            self._first_seen.pop(f"{secret.namespace}/{secret.name}", None)
        return deleted

    async def _pages(self, call: Callable[[dict[str, Any]], Awaitable[Any]]) -> list[Any]:
        return await all_pages(call, self._settings.page_size, self._settings.request_timeout)

    async def _delete(self, core: CoreV1Api, secret: BootstrapSecret) -> bool:
        """Whether this pass deleted it (404: gone already; 409: changed since listed; not
        at all once this replica stopped leading, even in the middle of a pass)."""
        from kubernetes_asyncio.client import V1DeleteOptions, V1Preconditions
        from kubernetes_asyncio.client.rest import ApiException

        if not self._leading():
            return False
        preconditions = V1Preconditions(uid=secret.uid, resource_version=secret.resource_version)
        try:
            await core.delete_namespaced_secret(
                secret.name,
                secret.namespace,
                body=V1DeleteOptions(preconditions=preconditions),
                _request_timeout=self._settings.request_timeout,
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True
