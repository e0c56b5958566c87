"""Renewing the certificates in proxyless gRPC pods' Secrets, and keeping their trust bundle
current.

The injector gives a proxyless pod a Secret (`injector.bootstrap_secret.proxyless_secret`)
holding gRPC's xDS bootstrap, the workload certificate, key and trust bundle its
`file_watcher` certificate provider reads, and the xDS client certificate. gRPC has no SDS:
nothing but those files ever reaches it. So the controller (`ProxylessRenewer`, one of its
parts with `--source kubernetes`, run by the leader only) lists those Secrets and rewrites
one when:

- its workload or xDS client certificate is due by the rule the controller renews sidecar
  certificates by (`certs.rotation.RenewalPolicy`: less than ~30 % of the lifetime left,
  measured from when it was issued if the CA's back-dating made it due on arrival);
- its trust bundle (`ca.pem`, `xds-ca.pem`) differs from the mesh's current one (a root
  rotation begins or ends);
- a certificate was not signed by the root that signs now (a root rotation's second
  phase: every certificate must come from the new root before the old one goes).

A Secret whose pod is gone is left alone: the collector (`sources.bootstrap_secrets`)
removes it.

What changes: the six certificate files are rewritten together (a new workload and xDS
client certificate for the same identity and proxy UUID, read from the bootstrap's node id,
new keys, the current bundle in both bundle files), `bootstrap.json` never (nothing in it
changes). The six files change in one write to the Secret, and kubelet swaps a Secret
volume's files in one step (a symlink to a new directory), so a pod never sees a certificate
next to another's key, and the order of the files does not matter. gRPC's file watcher reads
them again within its refresh interval. The write is a patch (of the six files and
`ISSUED_AT`) carrying the resourceVersion listed, so it is conditional: a Secret changed
meanwhile answers 409 and is looked at again next pass. A patch, not an update: the
controller's RBAC grants `update` on Secrets only for its CA Secret, and a cluster-wide
`update` would make that narrower grant meaningless.

The annotation `ISSUED_AT` records when the controller issued the certificates in a Secret
(its wall clock, as the certificate times are), for the back-dating rule above; a Secret the
injector made has none, and its certificates are judged by their own dates.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from cryptography import x509

from meshcp.certs.clock import Clock, utc_now
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.certs.keys import KeySpec
from meshcp.certs.provider import CertificateError, CertificateRequest, IssuedCertificate
from meshcp.certs.rotation import RenewalPolicy
from meshcp.identity import ProxyIdentity
from meshcp.injector.bootstrap_secret import MANAGED_BY, MANAGED_BY_LABEL, PROXYLESS_FILES
from meshcp.injector.template import BOOTSTRAP_FILE
from meshcp.kube.client import ApiClientFactory, all_pages, describe_api_error
from meshcp.policy.membership import PROXY_UUID_LABEL
from meshcp.sidecar.grpc_bootstrap import PROXYLESS_GRPC, PROXYLESS_KEY

if TYPE_CHECKING:
    from kubernetes_asyncio.client import CoreV1Api

log = logging.getLogger("meshcp.kubernetes.proxyless")

#: The Secrets the injector made for proxyless pods (the server filters; `ProxylessSecret.read` again).
SECRET_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{PROXY_UUID_LABEL},{PROXYLESS_KEY}={PROXYLESS_GRPC}"
#: When the controller last issued the certificates of a Secret (ISO 8601, UTC).
ISSUED_AT = "meshcp.dev/certificates-issued-at"

_CERT, _KEY, _CA, _XDS_CERT, _XDS_KEY, _XDS_CA = PROXYLESS_FILES

Issue = Callable[[CertificateRequest], Awaitable[IssuedCertificate]]


@dataclass(frozen=True, slots=True)
class RenewalSettings:
    """How proxyless Secrets are renewed."""

    #: Seconds between two passes at most (sooner when a certificate seen comes due, or
    #: the trust bundle or signing root changes).
    interval: float = 60.0
    #: Seconds between two looks at the trust bundle and signing root (in memory, no request).
    trust_check: float = 1.0
    #: Seconds a pass waits at least after another (certificates due on arrival, failures).
    min_wait: float = 1.0
    #: Objects per list page (`limit`).
    page_size: int = 500
    #: Seconds one API request may take.
    request_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class ProxylessSecret:
    """What the renewer reads of a proxyless pod's Secret."""

    namespace: str
    name: str
    resource_version: str | None
    proxy: ProxyIdentity
    workload: IssuedCertificate
    xds: IssuedCertificate
    bundles: tuple[str, str]
    issued_at: datetime | None

    @classmethod
    def read(cls, secret: Any, trust_domain: str) -> ProxylessSecret | None:
        """The Secret, if the injector made it for a proxyless pod (its labels), else None;
        ValueError names what is wrong with one that cannot be read."""
        metadata = secret.metadata
        labels = (metadata.labels if metadata is not None else None) or {}
        proxy_uuid = labels.get(PROXY_UUID_LABEL)
        if (
            labels.get(MANAGED_BY_LABEL) != MANAGED_BY
            or labels.get(PROXYLESS_KEY) != PROXYLESS_GRPC
            or not proxy_uuid
        ):
            return None
        files = _decoded(secret.data or {})
        try:
            node_id = json.loads(files[BOOTSTRAP_FILE])["node"]["id"]
            proxy = ProxyIdentity.parse(str(node_id), trust_domain)
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"{BOOTSTRAP_FILE} has no node id ({error!r})") from None
        if proxy.proxy_uuid != proxy_uuid:
            raise ValueError(f"{BOOTSTRAP_FILE} names proxy {proxy.proxy_uuid}, the label {proxy_uuid}")
        workload = _certificate(files, _CERT, _KEY)
        xds = _certificate(files, _XDS_CERT, _XDS_KEY)
        annotations = metadata.annotations or {}
        issued_at = None
        if stamp := annotations.get(ISSUED_AT):
            try:
                issued_at = datetime.fromisoformat(stamp)
            except ValueError:
                issued_at = None  # judged by the certificates' own dates
        return cls(
            metadata.namespace,
            metadata.name,
            metadata.resource_version,
            proxy,
            workload,
            xds,
            (files.get(_CA, ""), files.get(_XDS_CA, "")),
            issued_at if issued_at is not None and issued_at.tzinfo is not None else None,
        )


def _decoded(data: Mapping[str, str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for name, value in data.items():
        try:
            files[name] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError(f"data.{name} is not base64-encoded text") from None
    return files


def _certificate(files: Mapping[str, str], cert: str, key: str) -> IssuedCertificate:
    if cert not in files or key not in files:
        raise ValueError(f"needs data.{cert} and data.{key}")
    try:
        return IssuedCertificate.from_pem(files[cert], files[key])
    except ValueError as error:
        raise ValueError(f"data.{cert}: {error}") from None


def renew_at(secret: ProxylessSecret, policy: RenewalPolicy) -> datetime:
    """When the first of the Secret's two certificates comes due (by the wall clock)."""
    return min(
        policy.renew_at_obtained(secret.workload, secret.issued_at),
        policy.renew_at_obtained(secret.xds, secret.issued_at),
    )


def renewal_reason(
    secret: ProxylessSecret,
    *,
    bundle: str,
    signing_root: x509.Name | None,
    policy: RenewalPolicy,
    now: datetime,
) -> str | None:
    """Why the Secret's certificates must be issued again now, or None if they need not.

    `bundle`: the mesh's current trust bundle; `signing_root`: the subject of the root
    that signs now (None: not known, for a CA provider without root rotation)."""
    if now >= policy.renew_at_obtained(secret.workload, secret.issued_at):
        return "workload certificate due"
    if now >= policy.renew_at_obtained(secret.xds, secret.issued_at):
        return "xDS client certificate due"
    if bundle and any(held != bundle for held in secret.bundles):
        return "trust bundle changed"
    if signing_root is not None and any(
        issued.certificate.issuer != signing_root for issued in (secret.workload, secret.xds)
    ):
        return "certificate not from the signing root"
    return None


def renewed_files(workload: IssuedCertificate, xds: IssuedCertificate, bundle: str) -> dict[str, str]:
    """The six certificate files of a proxyless Secret, as its `data` (base64)."""
    contents = (
        workload.chain_pem,
        workload.private_key_pem,
        bundle,
        xds.chain_pem,
        xds.private_key_pem,
        bundle,
    )
    return {
        name: base64.b64encode(text.encode()).decode()
        for name, text in zip(PROXYLESS_FILES, contents, strict=True)
    }


class ProxylessRenewer:
    """Renews proxyless pods' Secrets; see the module's docstring."""

    def __init__(
        self,
        api_client_factory: ApiClientFactory,
        issue: Issue,
        trust_domain: str,
        *,
        bundle: Callable[[], str],
        signing_root: Callable[[], x509.Name | None] = lambda: None,
        validity: Callable[[], timedelta],
        key_spec: KeySpec = KeySpec.ECDSA_P256,
        policy: RenewalPolicy | None = None,
        settings: RenewalSettings | None = None,
        leading: Callable[[], bool] = lambda: True,
        on_renewed: Callable[[], None] = lambda: None,
        on_failed: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`issue`: the controller's issuer (retries included); `bundle`, `signing_root`:
        the trust as the controller serves it now (`runtime.trust`); `validity`: of new
        workload certificates (MeshConfig `certValidity`, as for sidecars); `leading`:
        whether this replica leads (only the leader writes Secrets); `on_renewed`,
        `on_failed`: one call per Secret renewed or not (metrics)."""
        self._factory = api_client_factory
        self._issue = issue
        self._trust_domain = trust_domain
        self._bundle = bundle
        self._signing_root = signing_root
        self._validity = validity
        self._key_spec = key_spec
        self._policy = policy or RenewalPolicy()
        self._settings = settings or RenewalSettings()
        self._leading = leading
        self._on_renewed = on_renewed
        self._on_failed = on_failed
        self._clock = clock
        self._monotonic = monotonic
        #: Secrets renewed so far.
        self.renewed = 0
        #: When the next pass is due (wall clock), from the certificates the last one saw.
        self._next_due: datetime | None = None
        #: Unreadable Secrets already warned about (namespace/name and resourceVersion).
        self._warned: set[tuple[str, str | None]] = set()

    async def run(self) -> None:
        """A pass every `interval` at most, sooner when a certificate comes due or the
        trust changes, until cancelled. A pass that fails (the API unreachable, a
        permission missing) is one warning; the next pass tries again."""
        from kubernetes_asyncio.client import CoreV1Api
        from kubernetes_asyncio.client.rest import ApiException

        async with await self._factory() as api_client:
            core = CoreV1Api(api_client)
            while True:
                trust = self._trust_key()
                try:
                    if self._leading():
                        await self.renew(core)
                except ApiException as error:
                    log.warning("cannot renew proxyless Secrets: %s", describe_api_error(error))
                except (aiohttp.ClientError, TimeoutError, OSError) as error:
                    log.warning("cannot renew proxyless Secrets: %r", error)
                await self._wait(trust)

    def _trust_key(self) -> tuple[str, x509.Name | None]:
        return self._bundle(), self._signing_root()

    async def _wait(self, trust: tuple[str, x509.Name | None]) -> None:
        """Until the next pass: `interval`, the next certificate due, or a trust change."""
        settings = self._settings
        started = self._monotonic()
        await asyncio.sleep(settings.min_wait)
        while True:
            waited = self._monotonic() - started
            if waited >= settings.interval or self._trust_key() != trust:
                return
            if self._next_due is not None and self._clock() >= self._next_due:
                return
            await asyncio.sleep(min(settings.trust_check, settings.interval - waited))

    async def renew(self, core: CoreV1Api) -> list[ProxylessSecret]:
        """One pass; the Secrets it renewed."""
        listed = await self._pages(
            lambda page: core.list_secret_for_all_namespaces(label_selector=SECRET_SELECTOR, **page)
        )
        pods = await self._pages(
            lambda page: core.list_pod_for_all_namespaces(label_selector=PROXY_UUID_LABEL, **page)
        )
        uuids = {uuid for pod in pods if (uuid := (pod.metadata.labels or {}).get(PROXY_UUID_LABEL))}
        bundle, signing_root = self._trust_key()
        now = self._clock()
        renewed: list[ProxylessSecret] = []
        next_due: list[datetime] = []
        for secret in self._readable(listed):
            if secret.proxy.proxy_uuid not in uuids:
                continue  # its pod is gone (or not stored yet): the collector's, not ours
            reason = renewal_reason(
                secret, bundle=bundle, signing_root=signing_root, policy=self._policy, now=now
            )
            if reason is None:
                next_due.append(renew_at(secret, self._policy))
                continue
            if not self._leading():
                break
            if await self.renew_secret(core, secret, bundle, reason):
                renewed.append(secret)
        self._next_due = min(next_due, default=None)
        return renewed

    def _readable(self, listed: Iterable[Any]) -> Iterable[ProxylessSecret]:
        """The listed Secrets that are proxyless pods' Secrets; one that cannot be read is a
        warning, once per version of it."""
        for item in listed:
            try:
                secret = ProxylessSecret.read(item, self._trust_domain)
            except ValueError as error:
                metadata = item.metadata
                key = (f"{metadata.namespace}/{metadata.name}", metadata.resource_version)
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("cannot renew proxyless Secret %s: %s", key[0], error)
                continue
            if secret is not None:
                yield secret

    async def renew_secret(self, core: CoreV1Api, secret: ProxylessSecret, bundle: str, reason: str) -> bool:
        """Issue both certificates again and patch them into the Secret; whether it was
        written (404: gone; 409: changed since listed, looked at again next pass). A 401 or
        403 raises (no Secret could be written); any other failure is counted and logged."""
        from kubernetes_asyncio.client.rest import ApiException

        where = f"{secret.namespace}/{secret.name}"
        try:
            issued_at = self._clock()
            workload = await self._issue(
                workload_request(
                    secret.proxy.identity,
                    self._trust_domain,
                    validity=self._validity(),
                    key_spec=self._key_spec,
                )
            )
            xds = await self._issue(xds_client_request(secret.proxy, key_spec=self._key_spec))
        except CertificateError as error:
            self._on_failed()
            log.warning("cannot renew proxyless Secret %s (%s): %s", where, reason, error)
            return False
        # A merge patch of the six files and the annotation (the bootstrap and everything
        # else stay); its resourceVersion makes it conditional on the Secret listed.
        patch: Any = {
            "metadata": {
                "resourceVersion": secret.resource_version,
                "annotations": {ISSUED_AT: issued_at.isoformat()},
            },
            "data": renewed_files(workload, xds, bundle),
        }
        try:
            await core.patch_namespaced_secret(
                secret.name, secret.namespace, patch, _request_timeout=self._settings.request_timeout
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False  # deleted, or changed since listed: next pass
            self._on_failed()
            if error.status in (401, 403):
                raise  # no Secret can be written: the pass ends, `run` warns once
            log.warning("cannot renew proxyless Secret %s (%s): %s", where, reason, describe_api_error(error))
            return False
        self.renewed += 1
        self._on_renewed()
        log.info(
            "renewed proxyless Secret %s of %s (%s): workload certificate serial %x until %s",
            where,
            secret.proxy.identity,
            reason,
            workload.serial_number,
            workload.not_after.isoformat(),
        )
        return True

    async def _pages(self, call: Callable[[dict[str, Any]], Awaitable[Any]]) -> list[Any]:
        return await all_pages(call, self._settings.page_size, self._settings.request_timeout)
