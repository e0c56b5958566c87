"""Leader election among controller replicas, with a coordination.k8s.io/v1 Lease.

Every replica serves xDS; only the leader writes to the cluster what must be written once
(root rotation steps, bootstrap-Secret collection, Events). The Lease is the same protocol
as client-go's leaderelection, so `kubectl get lease` reads it as usual:

- a replica that finds no Lease creates it holding it; a create that loses the race (409)
  leaves it a follower;
- the holder renews every `renew_every` seconds, with an update carrying the
  resourceVersion it read: if anything changed the Lease meanwhile the update fails (409)
  and the replica stops leading at once, so two replicas never both believe they hold it;
- a follower takes the Lease over only once it has seen no change to it for
  `duration` seconds, measured on its own monotonic clock from when it *observed* the last
  change (never from the timestamps in the Lease: the replicas' clocks need not agree);
- a leader that has not renewed for `renew_deadline` seconds (shorter than `duration`)
  stops leading before any follower may take over, even while its requests hang: the
  parts that act only while leading ask `leading`, which checks that deadline each time;
- on a clean shutdown the leader releases the Lease (empty holder), so a follower takes
  over at its next attempt rather than after `duration`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from meshcp.kube.client import ApiClientFactory, describe_api_error

if TYPE_CHECKING:
    from kubernetes_asyncio.client import CoordinationV1Api

log = logging.getLogger("meshcp.sources.leader")


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Which Lease, who this replica is, and the timings (client-go's defaults are 15/10/2)."""

    namespace: str
    name: str
    #: This replica's holderIdentity: unique per process (a restarted pod is a new holder).
    identity: str
    #: Seconds a Lease nobody renewed stays held (`leaseDurationSeconds`).
    duration: float = 15.0
    #: Seconds a leader keeps leading without a successful renewal: less than `duration`,
    #: so that it has stopped before a follower may take over.
    renew_deadline: float = 10.0
    #: Seconds between attempts (renewals by the leader, looks by the followers).
    renew_every: float = 2.0
    #: Seconds one API request may take.
    request_timeout: float = 5.0


class LeaderElection:
    """Whether this replica leads (`leading`); `run` keeps it current until cancelled."""

    def __init__(
        self,
        api_client_factory: ApiClientFactory,
        settings: LeaseSettings,
        *,
        on_change: Callable[[bool], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._factory = api_client_factory
        self._on_change = on_change
        self._monotonic = monotonic
        self._leading = False
        #: The holder last read from the Lease ("" : nobody).
        self.holder = ""
        #: The Lease's resourceVersion last seen, and when (monotonic) it was first seen.
        self._observed: tuple[str, float] = ("", 0.0)
        #: When (monotonic) this replica last renewed or acquired the Lease.
        self._renewed_at = 0.0
        #: The last failure logged (one line per change, not per attempt).
        self._failure = ""

    @property
    def leading(self) -> bool:
        """Whether this replica leads now: it holds the Lease, and renewed it less than
        `renew_deadline` ago. Timed here, at each question, rather than by the loop: a
        renewal that hangs must not keep a cut-off leader acting past the deadline."""
        elapsed = self._monotonic() - self._renewed_at
        return self._leading and elapsed < self.settings.renew_deadline

    def is_leading(self) -> bool:
        """`leading`, as a callable for the parts that act only while leading."""
        return self.leading

    def status(self) -> dict[str, object]:
        """For /debug/leader."""
        s = self.settings
        return {
            "lease": f"{s.namespace}/{s.name}",
            "identity": s.identity,
            "leader": self.leading,
            "holder": self.holder,
            "lease_duration_seconds": s.duration,
        }

    async def run(self) -> None:
        """Attempt every `renew_every` (a follower sooner, when the Lease it watches is due
        to expire) until cancelled; then, if leading, release the Lease."""
        from kubernetes_asyncio.client import ApiException, CoordinationV1Api  # see meshcp.kube.client

        async with await self._factory() as api_client:
            api = CoordinationV1Api(api_client)
            try:
                while True:
                    try:
                        async with asyncio.timeout(2 * self.settings.request_timeout):
                            wait = await self.attempt(api)
                    except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as error:
                        wait = self._failed(error)
                    else:
                        if self._failure:
                            log.info("Lease %s: the API answers again", self._where())
                            self._failure = ""
                    await asyncio.sleep(wait)
            finally:
                if self._leading:
                    self._set(False)
                    await self._release(api)

    async def attempt(self, api: CoordinationV1Api) -> float:
        """One look at the Lease: create, renew or take it over when due. Raises what the
        API answered other than 404 and 409; returns the seconds until the next attempt."""
        from kubernetes_asyncio.client import ApiException

        s = self.settings
        timeout = s.request_timeout
        now = self._monotonic()
        try:
            lease = await api.read_namespaced_lease(s.name, s.namespace, _request_timeout=timeout)
        except ApiException as error:
            if error.status != 404:
                raise
            created = await self._write(api, None, acquired=True, transitions=0)
            if created:
                self._renewed_at = now
                self.holder = s.identity
                self._set(True)
            return s.renew_every
        spec = lease.spec
        holder = str(spec.holder_identity or "") if spec is not None else ""
        version = str(lease.metadata.resource_version or "")
        if version != self._observed[0]:
            self._observed = (version, now)
        self.holder = holder
        transitions = int(spec.lease_transitions or 0) if spec is not None else 0
        if holder == s.identity:
            acquired = spec.acquire_time if spec is not None else None
            if await self._write(api, version, acquired=False, transitions=transitions, since=acquired):
                self._renewed_at = now
                self._set(True)
            else:
                self._set(False)  # changed by someone else since read: not ours any more
            return s.renew_every
        if self._leading:
            self._set(False)  # someone else holds it now
        duration = float(spec.lease_duration_seconds or s.duration) if spec is not None else s.duration
        expires = self._observed[1] + duration
        if holder and now < expires:
            return min(s.renew_every, max(expires - now, 0.0) + 0.05)
        if await self._write(api, version, acquired=True, transitions=transitions + 1):
            self._renewed_at = now
            self.holder = s.identity
            self._set(True)
        return s.renew_every

    async def _write(
        self,
        api: CoordinationV1Api,
        version: str | None,
        *,
        acquired: bool,
        transitions: int,
        since: datetime.datetime | None = None,
        holder: str | None = None,
    ) -> bool:
        """Create (`version` None) or update the Lease at `version`; False on a conflict."""
        from kubernetes_asyncio.client import ApiException

        s = self.settings
        now = datetime.datetime.now(datetime.UTC)
        metadata: dict[str, Any] = {"name": s.name, "namespace": s.namespace}
        if version is not None:
            metadata["resourceVersion"] = version
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": s.identity if holder is None else holder,
                "leaseDurationSeconds": max(1, round(s.duration)) if holder is None else 1,
                "acquireTime": _micro_time(now if acquired or since is None else since),
                "renewTime": _micro_time(now),
                "leaseTransitions": transitions,
            },
        }
        try:
            if version is None:
                await api.create_namespaced_lease(s.namespace, body, _request_timeout=s.request_timeout)
            else:
                await api.replace_namespaced_lease(
                    s.name, s.namespace, body, _request_timeout=s.request_timeout
                )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def _release(self, api: CoordinationV1Api) -> None:
        """Hand the Lease back (empty holder), best effort: a follower takes over at its
        next attempt instead of after `duration`."""
        from kubernetes_asyncio.client import ApiException

        s = self.settings
        try:
            async with asyncio.timeout(s.request_timeout):
                lease = await api.read_namespaced_lease(s.name, s.namespace)
                if lease.spec is None or lease.spec.holder_identity != s.identity:
                    return
                version = str(lease.metadata.resource_version or "")
                transitions = int(lease.spec.lease_transitions or 0)
                if await self._write(api, version, acquired=False, transitions=transitions, holder=""):
                    log.info("Lease %s released", self._where())
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as error:
            log.warning("Lease %s not released (%s); it expires by itself", self._where(), _reason(error))

    def _failed(self, error: BaseException) -> float:
        """An attempt failed: still the leader until `renew_deadline` after the last
        renewal, then not; logged once per kind of failure."""
        reason = _reason(error)
        if reason != self._failure:
            log.error("Lease %s: %s; retrying every %gs", self._where(), reason, self.settings.renew_every)
            self._failure = reason
        if self._leading and self._monotonic() - self._renewed_at >= self.settings.renew_deadline:
            self._set(False)
        return self.settings.renew_every

    def _set(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("leading: holding Lease %s as %s", self._where(), self.settings.identity)
        else:
            log.warning("not leading any more: Lease %s (holder now %r)", self._where(), self.holder)
        if self._on_change is not None:
            self._on_change(leading)

    def _where(self) -> str:
        return f"{self.settings.namespace}/{self.settings.name}"


def _micro_time(when: datetime.datetime) -> str:
    """A MicroTime as the API writes it: RFC 3339 with microseconds, in UTC."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reason(error: BaseException) -> str:
    from kubernetes_asyncio.client import ApiException

    if isinstance(error, ApiException):
        return describe_api_error(error)
    return str(error) or type(error).__name__
