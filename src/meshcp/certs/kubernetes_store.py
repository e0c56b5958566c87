"""CA state in one Kubernetes Secret (`SecretStore`), for controllers without a volume.

Every change is a read-modify-write of the whole Secret carrying the resourceVersion it
read, so a concurrent change (another replica) makes it fail with 409 Conflict and it is
redone on a fresh read; creating the Secret when another replica just did (409
AlreadyExists) is redone the same way. `create_all` writes several entries in one update,
only if none of them exists yet: two replicas creating a CA at once end up with the root
of whichever committed first.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, ApiException, CoreV1Api, V1ObjectMeta, V1Secret

from meshcp.certs.provider import CertificateError
from meshcp.certs.storage import check_name

_PROVIDER = "internal"
_MAX_ATTEMPTS = 10


class _Conflict(Exception):
    """The Secret changed (or appeared) since it was read: read it again."""


class SecretStore:
    """Entries as the keys of the Secret `namespace`/`name` (created when first written).

    The caller owns `api_client` (and closes it). Every entry of a Secret is secret, so
    the `secret` flag of `write` changes nothing here.
    """

    def __init__(
        self, api_client: ApiClient, namespace: str, name: str, *, max_attempts: int = _MAX_ATTEMPTS
    ) -> None:
        self._client = api_client
        self._api = CoreV1Api(api_client)
        self._namespace = namespace
        self._name = name
        self._max_attempts = max_attempts

    async def aclose(self) -> None:
        """Close the API client (the store owns it once handed over)."""
        await self._client.close()

    @property
    def location(self) -> str:
        return f"Kubernetes Secret {self._namespace}/{self._name}"

    async def read(self, name: str) -> bytes | None:
        check_name(name)
        secret = await self._get()
        if secret is None:
            return None
        value = (secret.data or {}).get(name)
        return None if value is None else base64.b64decode(value)

    async def write(self, name: str, data: bytes, *, secret: bool = False) -> None:
        check_name(name)
        await self._update(lambda entries: {**entries, name: data})

    async def delete(self, name: str) -> None:
        check_name(name)

        def without(entries: dict[str, bytes]) -> dict[str, bytes] | None:
            if name not in entries:
                return None
            return {key: value for key, value in entries.items() if key != name}

        await self._update(without)

    async def create_all(self, entries: Mapping[str, bytes], *, secret: Collection[str] = ()) -> bool:
        """Write all `entries` in one update if none of them exists yet; False (and nothing
        written) if one does, e.g. another replica committed its CA first."""
        for name in entries:
            check_name(name)
        created = False

        def add(current: dict[str, bytes]) -> dict[str, bytes] | None:
            nonlocal created
            created = not any(name in current for name in entries)
            return {**current, **entries} if created else None

        await self._update(add)
        return created

    async def _update(self, change: Callable[[dict[str, bytes]], dict[str, bytes] | None]) -> None:
        """Apply `change` (current entries -> new entries, or None for no change) to the
        Secret, redone on a fresh read whenever another writer got there first."""
        for _ in range(self._max_attempts):
            secret = await self._get()
            current = {} if secret is None else _decode(secret.data)
            updated = change(current)
            if updated is None:
                return
            try:
                if secret is None:
                    await self._create(updated)
                else:
                    version = secret.metadata.resource_version if secret.metadata else None
                    body = self._body(updated, version)
                    await self._call(self._api.replace_namespaced_secret(self._name, self._namespace, body))
                return
            except (_Conflict, _NotFound):  # changed, created or deleted meanwhile
                continue
        raise CertificateError(
            _PROVIDER,
            f"{self.location} kept changing during {self._max_attempts} attempts to update it",
            retryable=True,
        )

    def _body(self, entries: dict[str, bytes], resource_version: str | None) -> V1Secret:
        return V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=V1ObjectMeta(
                name=self._name, namespace=self._namespace, resource_version=resource_version
            ),
            data={key: base64.b64encode(value).decode("ascii") for key, value in entries.items()},
        )

    async def _create(self, entries: dict[str, bytes]) -> None:
        try:
            await self._call(self._api.create_namespaced_secret(self._namespace, self._body(entries, None)))
        except _NotFound as exc:
            raise CertificateError(
                _PROVIDER, f"cannot create {self.location}: namespace {self._namespace} not found"
            ) from exc

    async def _get(self) -> V1Secret | None:
        try:
            secret: V1Secret = await self._call(self._api.read_namespaced_secret(self._name, self._namespace))
        except _NotFound:
            return None
        return secret

    async def _call(self, request: Any) -> Any:
        try:
            return await request
        except ApiException as exc:
            if exc.status == 404:
                raise _NotFound from exc
            if exc.status == 409:
                raise _Conflict from exc
            status = exc.status or 0
            raise CertificateError(
                _PROVIDER,
                f"{self.location}: the Kubernetes API answered {exc.status} {exc.reason}",
                retryable=status == 429 or status >= 500,
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CertificateError(
                _PROVIDER,
                f"{self.location}: the Kubernetes API is unreachable ({exc or type(exc).__name__})",
                retryable=True,
            ) from exc


class _NotFound(Exception):
    """The Secret does not exist."""


def _decode(data: dict[str, str] | None) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (data or {}).items()}
