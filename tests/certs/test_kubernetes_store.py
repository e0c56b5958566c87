"""`SecretStore` against a kmock emulator, and the CA on it shared by several replicas."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp.web
import attrs
import kmock
import pytest
from cryptography.hazmat.primitives import hashes
from kubernetes_asyncio.client import ApiClient, Configuration

from meshcp.certs.internal import InternalCA
from meshcp.certs.kubernetes_store import SecretStore
from meshcp.certs.provider import CertificateError
from meshcp.certs.setup import CaSettings, close_provider, open_provider

from .support import FakeClock

_SECRET_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
NAMESPACE, NAME = "meshcp-system", "meshcp-ca"


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock with Secrets served as a real API server does: kmock 0.8 has no PUT (replace)
    and no resourceVersion, so Secrets are kept here, with optimistic concurrency."""

    secrets: dict[tuple[str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    version: int = attrs.field(default=0, init=False)
    #: (method, status) of every Secret request answered, in order.
    calls: list[tuple[str, int]] = attrs.field(factory=list, init=False)
    #: Awaited before a replace is applied (to change the Secret under the writer).
    before_replace: Callable[[], Awaitable[None]] | None = attrs.field(default=None, init=False)
    #: Creates wait until this many have arrived (so that racing creators all saw no Secret).
    hold_creates: int = attrs.field(default=0, init=False)
    _creates: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _arrived: int = attrs.field(default=0, init=False)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _SECRET_PATH.match(raw_request.rel_url.path)
        if match is None:
            return await super().__call__(raw_request)
        namespace, name = match.group(1), match.group(2)
        body = await raw_request.json() if raw_request.can_read_body else None
        status, payload = await self._serve_secret(raw_request.method, namespace, name, body)
        self.calls.append((raw_request.method, status))
        return aiohttp.web.json_response(payload, status=status)

    async def _serve_secret(
        self, method: str, namespace: str, name: str | None, body: Any
    ) -> tuple[int, dict[str, Any]]:
        if method == "POST":
            name = body["metadata"]["name"]
            if self.hold_creates:
                async with self._creates:
                    self._arrived += 1
                    self._creates.notify_all()
                    await self._creates.wait_for(lambda: self._arrived >= self.hold_creates)
            if (namespace, name) in self.secrets:
                return _status(409, "AlreadyExists")
            return 201, self.store(namespace, name, body)
        assert name is not None
        current = self.secrets.get((namespace, name))
        if method == "PUT" and self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            await hook()
            current = self.secrets.get((namespace, name))
        if current is None:
            return _status(404, "NotFound")
        if method == "GET":
            return 200, current
        if method == "PUT":
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return _status(409, "Conflict")
            return 200, self.store(namespace, name, body)
        return _status(405, "MethodNotAllowed")

    def store(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": body.get("type", "Opaque"),
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self.version)},
            "data": dict(body.get("data") or {}),
        }
        self.secrets[namespace, name] = stored
        return stored

    def entries(self) -> dict[str, bytes]:
        data = self.secrets[NAMESPACE, NAME]["data"]
        return {key: base64.b64decode(value) for key, value in data.items()}


def _status(code: int, reason: str) -> tuple[int, dict[str, Any]]:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason}


@pytest.fixture
async def k() -> AsyncIterator[Emulator]:
    async with Emulator() as emulator, kmock.Server(emulator):
        emulator.resources["v1/secrets"] = {}  # type: ignore[assignment]
        yield emulator


@pytest.fixture
async def clients(k: Emulator) -> AsyncIterator[Callable[[], ApiClient]]:
    made: list[ApiClient] = []

    def client() -> ApiClient:
        made.append(ApiClient(Configuration(host=str(k.url))))
        return made[-1]

    yield client
    for api in made:
        await api.close()


def store(clients: Callable[[], ApiClient]) -> SecretStore:
    return SecretStore(clients(), NAMESPACE, NAME)


async def test_round_trip(k: Emulator, clients: Callable[[], ApiClient]) -> None:
    secrets = store(clients)
    assert secrets.location == f"Kubernetes Secret {NAMESPACE}/{NAME}"
    assert await secrets.read("a.txt") is None  # no Secret yet
    await secrets.write("a.txt", b"one")
    await secrets.write("b.key", b"\x00two", secret=True)
    await secrets.write("a.txt", b"uno")
    assert await secrets.read("a.txt") == b"uno"
    assert await secrets.read("b.key") == b"\x00two"
    assert await secrets.read("c") is None
    await secrets.delete("a.txt")
    await secrets.delete("a.txt")  # missing: not an error
    assert await secrets.read("a.txt") is None
    assert k.entries() == {"b.key": b"\x00two"}
    assert ("POST", 201) in k.calls and ("PUT", 200) in k.calls
    with pytest.raises(ValueError):
        await secrets.read("../escape")


async def test_delete_without_secret_is_a_no_op(k: Emulator, clients: Callable[[], ApiClient]) -> None:
    await store(clients).delete("a.txt")
    assert (NAMESPACE, NAME) not in k.secrets


async def test_write_retries_after_a_concurrent_change(k: Emulator, clients: Callable[[], ApiClient]) -> None:
    secrets = store(clients)
    await secrets.write("mine", b"1")

    async def other_replica() -> None:
        entries = k.secrets[NAMESPACE, NAME]["data"]
        k.store(NAMESPACE, NAME, {"data": {**entries, "theirs": base64.b64encode(b"2").decode()}})

    k.before_replace = other_replica
    await secrets.write("mine", b"3")
    assert k.entries() == {"mine": b"3", "theirs": b"2"}  # their change survived
    assert [call for call in k.calls if call[0] == "PUT"] == [("PUT", 409), ("PUT", 200)]


async def test_create_race_adopts_the_existing_secret(k: Emulator, clients: Callable[[], ApiClient]) -> None:
    k.hold_creates = 2
    await asyncio.gather(store(clients).write("a", b"1"), store(clients).write("b", b"2"))
    assert k.entries() == {"a": b"1", "b": b"2"}
    assert ("POST", 409) in k.calls


async def test_replicas_opening_at_once_share_one_root(
    k: Emulator, clients: Callable[[], ApiClient], clock: FakeClock
) -> None:
    k.hold_creates = 2  # both saw no CA and race to create the Secret
    async with asyncio.timeout(30):
        first, second = await asyncio.gather(
            InternalCA.open(store(clients), clock=clock), InternalCA.open(store(clients), clock=clock)
        )
    assert first.state.active.id == second.state.active.id
    fingerprints = {ca.state.active.certificate.fingerprint(hashes.SHA256()) for ca in (first, second)}
    assert len(fingerprints) == 1
    assert await first.trust_bundle() == await second.trust_bundle()
    assert [call for call in k.calls if call[0] == "POST"] == [("POST", 201), ("POST", 409)]
    roots = [entry for entry in k.entries() if entry.startswith("root-")]
    assert sorted(roots) == sorted([f"root-{first.state.active.id}.crt", f"root-{first.state.active.id}.key"])

    k.hold_creates = 0
    third = await InternalCA.open(store(clients), clock=clock)  # a replica started later
    assert third.state.active.id == first.state.active.id


async def test_racing_into_an_existing_empty_secret(
    k: Emulator, clients: Callable[[], ApiClient], clock: FakeClock
) -> None:
    k.store(NAMESPACE, NAME, {"data": {}})  # created by a deployment tool, still empty
    first, second = await asyncio.gather(
        InternalCA.open(store(clients), clock=clock), InternalCA.open(store(clients), clock=clock)
    )
    assert first.state.active.id == second.state.active.id
    assert await first.trust_bundle() == await second.trust_bundle()


async def test_restart_keeps_the_root(
    k: Emulator, clients: Callable[[], ApiClient], clock: FakeClock
) -> None:
    before = await InternalCA.open(store(clients), clock=clock)
    after = await InternalCA.open(store(clients), clock=clock, create=False)
    assert after.state.active.id == before.state.active.id
    assert await after.trust_bundle() == await before.trust_bundle()


async def test_unreachable_api_names_the_secret(clock: FakeClock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens
    async with ApiClient(Configuration(host=f"http://127.0.0.1:{port}")) as api:
        secrets = SecretStore(api, NAMESPACE, NAME)
        with pytest.raises(CertificateError, match=f"{NAMESPACE}/{NAME}.*unreachable") as info:
            await InternalCA.open(secrets, clock=clock)
        assert info.value.retryable
        with pytest.raises(CertificateError, match=f"{NAMESPACE}/{NAME}"):
            await secrets.write("a", b"1")


async def test_open_provider_keeps_the_internal_ca_in_the_configured_secret(k: Emulator) -> None:
    async def factory() -> ApiClient:
        return ApiClient(Configuration(host=str(k.url)))

    settings = CaSettings(secret="meshcp-system/meshcp-ca")
    first = await open_provider(settings, factory)
    second = await open_provider(settings, factory)
    try:
        assert isinstance(first, InternalCA) and isinstance(first.store, SecretStore)
        assert await first.trust_bundle() == await second.trust_bundle()  # one root, shared
        assert first.store.location.endswith("meshcp-system/meshcp-ca")
    finally:
        await close_provider(first)
        await close_provider(second)
    with pytest.raises(CertificateError, match="is not NAMESPACE/NAME"):
        await open_provider(CaSettings(secret="no-slash"), factory)


async def test_open_provider_builds_the_cert_manager_provider(k: Emulator) -> None:
    async def factory() -> ApiClient:
        return ApiClient(Configuration(host=str(k.url)))

    provider = await open_provider(
        CaSettings(provider="cert-manager", cert_manager_issuer="mesh-ca"), factory
    )
    try:
        assert provider.name == "cert-manager"
    finally:
        await close_provider(provider)
    with pytest.raises(CertificateError, match="--cert-manager-issuer is required"):
        await open_provider(CaSettings(provider="cert-manager"), factory)
