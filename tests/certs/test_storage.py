from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshcp.certs import ca_persistence
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import workload_request
from meshcp.certs.provider import CertificateError
from meshcp.certs.storage import DirectoryStore, MemoryStore
from meshcp.identity import Identity

from .support import FakeClock


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_directory_store_round_trip_and_modes(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "state")
    assert await store.read("missing") is None
    await store.write("secret.key", b"k", secret=True)
    await store.write("public.crt", b"c")
    assert await store.read("secret.key") == b"k"
    assert mode(tmp_path / "state" / "secret.key") == 0o600
    assert mode(tmp_path / "state" / "public.crt") == 0o644
    assert mode(tmp_path / "state") == 0o700
    await store.write("public.crt", b"replaced")
    assert await store.read("public.crt") == b"replaced"
    assert sorted(os.listdir(tmp_path / "state")) == ["public.crt", "secret.key"]  # no temp files left
    await store.delete("public.crt")
    await store.delete("public.crt")
    assert await store.read("public.crt") is None


async def test_key_mode_is_exact_despite_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        await DirectoryStore(tmp_path).write("a.key", b"k", secret=True)
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.key") == 0o600


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "spaces here"])
async def test_entry_names_are_restricted(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid state entry name"):
        await DirectoryStore(tmp_path).write(name, b"x")


async def test_restart_keeps_the_same_root(tmp_path: Path, clock: FakeClock) -> None:
    first = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    second = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert second.state.active.id == first.state.active.id
    assert await second.trust_bundle() == await first.trust_bundle()
    issued = await second.issue(workload_request(Identity("ns", "sa")))
    issued.certificate.verify_directly_issued_by(first.state.active.certificate)


async def test_root_key_file_is_private_and_certificate_public(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    root_id = ca.state.active.id
    assert mode(tmp_path / ca_persistence.key_entry(root_id)) == 0o600
    assert mode(tmp_path / ca_persistence.certificate_entry(root_id)) == 0o644
    assert b"PRIVATE KEY" in (tmp_path / ca_persistence.key_entry(root_id)).read_bytes()
    assert b"PRIVATE" not in (tmp_path / ca_persistence.STATE_ENTRY).read_bytes()


async def test_memory_store_marks_the_key_secret(clock: FakeClock) -> None:
    store = MemoryStore()
    ca = await InternalCA.open(store, clock=clock)
    assert store.secret_names == {ca_persistence.key_entry(ca.state.active.id)}


async def test_missing_root_file_is_a_clear_error(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    (tmp_path / ca_persistence.key_entry(ca.state.active.id)).unlink()
    with pytest.raises(CertificateError, match=r"is unusable: root-[0-9a-f]{16}\.key is missing") as caught:
        await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert caught.value.provider == "internal"


async def test_corrupt_index_is_a_clear_error(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / ca_persistence.STATE_ENTRY).write_text("{not json")
    with pytest.raises(CertificateError, match=r"ca-state\.json is not JSON"):
        await InternalCA.open(DirectoryStore(tmp_path), clock=clock)


async def test_swapped_root_certificate_is_detected(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    other = await InternalCA.open(MemoryStore(), clock=clock)
    (tmp_path / ca_persistence.certificate_entry(ca.state.active.id)).write_text(other.state.active.pem)
    with pytest.raises(CertificateError, match="holds a different certificate"):
        await InternalCA.open(DirectoryStore(tmp_path), clock=clock)


async def test_open_without_create_refuses_an_empty_store(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no CA found"):
        await InternalCA.open(DirectoryStore(tmp_path), create=False)
    assert os.listdir(tmp_path) == []
