"""The cert-manager provider: keys are made here, a `CertificateRequest` carries the CSR.

`issue` creates a cert-manager `CertificateRequest` (cert-manager.io/v1) holding a CSR for a
key generated locally, polls it until cert-manager's `Ready` condition turns true (or the
request is denied or fails, or the timeout passes), and deletes it afterwards. The issuer
named by `issuerRef` decides what is really signed; the SANs are checked on the way back.

The trust bundle is the `status.ca` of the most recent signed request (or the PEM given to
the constructor until then): cert-manager has no API for "the CA of an issuer".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.client.rest import ApiException

from meshcp.certs import pem
from meshcp.certs.csr import new_key_and_csr
from meshcp.certs.keys import private_key_pem
from meshcp.certs.provider import (
    CertificateError,
    CertificateRequest,
    ClosableProvider,
    IssuedCertificate,
    check_matches_request,
)
from meshcp.kube.client import describe_api_error

log = logging.getLogger(__name__)

_NAME = "cert-manager"
GROUP = "cert-manager.io"
VERSION = "v1"
PLURAL = "certificaterequests"
USAGES = ("digital signature", "key encipherment", "server auth", "client auth")
#: Seconds the best-effort deletion of a finished request may take.
_DELETE_TIMEOUT = 5.0
_CONNECTION_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def go_duration(validity: timedelta) -> str:
    """`86400s` as cert-manager (Go's `time.ParseDuration`) reads it: `24h0m0s`."""
    seconds = max(1, int(validity.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes}m{seconds}s"


class CertManagerProvider(ClosableProvider):
    """Signs through cert-manager; use as an async context manager (or `aclose`).

    `api_client` is an `ApiClient` (owned by the caller, not closed here) or a factory of
    one (called on first use; the provider closes what it made).
    """

    NAME = _NAME

    def __init__(
        self,
        api_client: ApiClient | Callable[[], ApiClient],
        *,
        namespace: str,
        issuer_name: str,
        issuer_kind: str = "Issuer",
        issuer_group: str = GROUP,
        timeout: float = 30.0,
        poll_interval: float = 0.5,
        trust_bundle_pem: str | None = None,
        owns_client: bool = False,
    ) -> None:
        """`owns_client`: an `api_client` given as an object is closed by `aclose` too."""
        if timeout <= 0 or poll_interval <= 0:
            raise ValueError("timeout and poll_interval must be positive")
        if isinstance(api_client, ApiClient):
            self._api: ApiClient | None = api_client
            self._factory: Callable[[], ApiClient] | None = None
        else:
            self._api = None
            self._factory = api_client
        self._namespace = namespace
        self._issuer_ref = {"name": issuer_name, "kind": issuer_kind, "group": issuer_group}
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._ca_pem = _normalise_ca(trust_bundle_pem) if trust_bundle_pem else None
        self._owns = owns_client or self._factory is not None

    async def aclose(self) -> None:
        """Close the API client if this provider made or was given ownership of it."""
        if self._owns and self._api is not None:
            api, self._api = self._api, None
            await api.close()

    def _objects(self) -> CustomObjectsApi:
        if self._api is None:
            assert self._factory is not None
            self._api = self._factory()
        return CustomObjectsApi(self._api)

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        key, csr_pem = await new_key_and_csr(request)
        name = "meshcp-" + hashlib.sha256(csr_pem.encode("ascii")).hexdigest()[:16]
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CertificateRequest",
            "metadata": {
                "name": name,
                "namespace": self._namespace,
                "labels": {"app.kubernetes.io/managed-by": "meshcp"},
            },
            "spec": {
                "request": base64.b64encode(csr_pem.encode("ascii")).decode("ascii"),
                "issuerRef": dict(self._issuer_ref),
                "duration": go_duration(request.validity),
                "usages": list(USAGES),
                "isCA": False,
            },
        }
        objects = self._objects()
        where = f"CertificateRequest {self._namespace}/{name}"
        try:
            await objects.create_namespaced_custom_object(
                GROUP, VERSION, self._namespace, PLURAL, body, _request_timeout=self._timeout
            )
        except ApiException as error:
            raise self._api_error(f"cannot create {where}", error) from None
        except _CONNECTION_ERRORS as error:
            raise self._unreachable(f"cannot create {where}", error) from None
        try:
            status = await self._wait_signed(objects, name, where)
        finally:
            await self._delete(objects, name, where)
        chain_pem = _decode(status.get("certificate"), f"{where}: status.certificate")
        try:
            issued = IssuedCertificate.from_pem(chain_pem, private_key_pem(key))
        except ValueError as exc:
            raise CertificateError(_NAME, f"{where}: unusable certificate: {exc}") from None
        if status.get("ca"):
            self._ca_pem = _normalise_ca(_decode(status["ca"], f"{where}: status.ca"))
        check_matches_request(_NAME, issued, request)
        return issued

    async def trust_bundle(self) -> str:
        if self._ca_pem is None:
            raise CertificateError(
                _NAME,
                "no trust bundle yet: cert-manager reports the CA only with a signed request "
                "(issue a certificate first, or configure the trust bundle PEM)",
                retryable=True,
            )
        return self._ca_pem

    async def _wait_signed(self, objects: CustomObjectsApi, name: str, where: str) -> Mapping[str, Any]:
        """The request's `status` once Ready; CertificateError if denied, failed or late."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                found = await objects.get_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, PLURAL, name, _request_timeout=remaining
                )
            except ApiException as error:
                raise self._api_error(f"cannot read {where}", error) from None
            except _CONNECTION_ERRORS as error:
                if loop.time() >= deadline:
                    break
                raise self._unreachable(f"cannot read {where}", error) from None
            status = found.get("status") if isinstance(found, dict) else None
            if isinstance(status, dict) and _settled(status, where):
                return status
            await asyncio.sleep(min(self._poll_interval, max(0.0, deadline - loop.time())))
        raise CertificateError(
            _NAME,
            f"{where} was not signed within {self._timeout:g}s (is the issuer running?)",
            retryable=True,
        )

    async def _delete(self, objects: CustomObjectsApi, name: str, where: str) -> None:
        try:
            await objects.delete_namespaced_custom_object(
                GROUP, VERSION, self._namespace, PLURAL, name, _request_timeout=_DELETE_TIMEOUT
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("cannot delete %s: %s", where, describe_api_error(error))
        except _CONNECTION_ERRORS as error:
            log.warning("cannot delete %s: %r", where, error)

    def _api_error(self, what: str, error: ApiException) -> CertificateError:
        status = error.status or 0
        retryable = status >= 500 or status == 429
        return CertificateError(_NAME, f"{what}: {describe_api_error(error)}", retryable=retryable)

    def _unreachable(self, what: str, error: BaseException) -> CertificateError:
        host = self._api.configuration.host if self._api is not None else "?"
        detail = str(error) or type(error).__name__
        return CertificateError(
            _NAME, f"{what}: the Kubernetes API at {host} is unreachable: {detail}", retryable=True
        )


def _settled(status: Mapping[str, Any], where: str) -> bool:
    """True once Ready=True; raises for Denied=True, InvalidRequest=True or Ready=False/Failed."""
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return False
    by_type = {c.get("type"): c for c in conditions if isinstance(c, dict)}
    denied = by_type.get("Denied")
    if denied is not None and denied.get("status") == "True":
        raise CertificateError(_NAME, f"{where} was denied: {_condition_message(denied)}")
    invalid = by_type.get("InvalidRequest")
    if invalid is not None and invalid.get("status") == "True":
        raise CertificateError(_NAME, f"{where} is invalid: {_condition_message(invalid)}")
    ready = by_type.get("Ready")
    if ready is None:
        return False
    if ready.get("status") == "True":
        return True
    if ready.get("status") == "False" and ready.get("reason") == "Failed":
        # The issuer gave up on this request; a new one may succeed (the CA was down).
        raise CertificateError(_NAME, f"{where} failed: {_condition_message(ready)}", retryable=True)
    return False


def _condition_message(condition: Mapping[str, Any]) -> str:
    reason = condition.get("reason") or "no reason"
    message = condition.get("message") or "no message"
    return f"{message} (reason {reason})"


def _decode(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise CertificateError(_NAME, f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise CertificateError(_NAME, f"{what} is not base64 PEM: {exc}") from None


def _normalise_ca(ca_pem: str) -> str:
    try:
        return pem.to_pem(pem.load_certificates(ca_pem))
    except ValueError as exc:
        raise CertificateError(_NAME, f"unusable CA certificate: {exc}") from None
