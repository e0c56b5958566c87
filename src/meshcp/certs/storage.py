"""Where the CA keeps its state: a small named-blob store.

The interface is deliberately the shape of a Kubernetes Secret (flat names, byte values,
a flag for what is secret) so a Secret-backed store can replace the state directory
without touching the CA. Callers order their writes so that each single `write` is the
commit point; the directory store makes each write atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from meshcp.certs.provider import CertificateError

_NAME_RE = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]*")
_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644
_DIR_MODE = 0o700


def check_name(name: str) -> str:
    """Names valid both as file names and as Kubernetes Secret keys."""
    if len(name) > 253 or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid state entry name {name!r}")
    return name


class StateStore(Protocol):
    """Durable storage for a few small named entries."""

    @property
    def location(self) -> str:
        """Where the entries live, for messages (a path, a Secret name)."""
        ...

    async def read(self, name: str) -> bytes | None:
        """The entry's bytes, or None if it does not exist."""
        ...

    async def write(self, name: str, data: bytes, *, secret: bool = False) -> None:
        """Create or replace an entry atomically; `secret` entries are readable by the owner only."""
        ...

    async def delete(self, name: str) -> None:
        """Remove an entry; removing a missing entry is not an error."""
        ...


@runtime_checkable
class AtomicCreateStore(StateStore, Protocol):
    """A store shared by several writers (controller replicas) that can create a set of
    entries as one commit, so that concurrent creators agree on one result."""

    async def create_all(self, entries: Mapping[str, bytes], *, secret: Collection[str] = ()) -> bool:
        """Write all `entries` atomically if none of them exists yet (`secret` names those
        readable by the owner only); False, writing nothing, if one already exists."""
        ...


@runtime_checkable
class ClosableStore(Protocol):
    """A store holding a connection open (the Secret store's API client); its opener closes it."""

    async def aclose(self) -> None: ...


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole or not at all, with `mode` from the first byte, never through a
    symlink: a new file (O_EXCL: a name nobody else made) beside it, its mode set exactly
    (the umask may have narrowed it; a certificate stays readable by tools run as other
    users), every byte written and synced, then renamed over `path` (a symlink there is
    replaced, not followed)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temp, path)


class StateWriteError(CertificateError):
    """An entry could not be written or removed (disk full, read-only, permissions): one
    line naming the entry and the directory. Retryable: what was committed before is
    intact (each write is whole or not at all), and the same write may succeed once the
    cause is gone; the trust upkeep logs it and tries again instead of ending the
    controller, and the command line prints it as one line."""

    def __init__(self, action: str, name: str, location: str, error: OSError) -> None:
        reason = error.strerror or str(error)
        super().__init__("internal", f"cannot {action} {name} in {location}: {reason}", retryable=True)


class DirectoryStore:
    """Entries as files in a state directory (created with mode 0700 if missing)."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)

    @property
    def location(self) -> str:
        return str(self._path)

    async def read(self, name: str) -> bytes | None:
        return await asyncio.to_thread(self._read, check_name(name))

    async def write(self, name: str, data: bytes, *, secret: bool = False) -> None:
        try:
            await asyncio.to_thread(self._write, check_name(name), data, secret)
        except OSError as error:
            raise StateWriteError("write", name, self.location, error) from None

    async def delete(self, name: str) -> None:
        try:
            await asyncio.to_thread(self._delete, check_name(name))
        except OSError as error:
            raise StateWriteError("remove", name, self.location, error) from None

    def _read(self, name: str) -> bytes | None:
        try:
            return (self._path / name).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: bytes, secret: bool) -> None:
        self._path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        # An existing directory keeps its mode through mkdir: narrow it (keys live here).
        if self._path.stat().st_mode & 0o777 & ~_DIR_MODE:
            os.chmod(self._path, _DIR_MODE)
        write_file(self._path / name, data, _SECRET_MODE if secret else _PUBLIC_MODE)
        self._sync_directory()

    def _delete(self, name: str) -> None:
        (self._path / name).unlink(missing_ok=True)
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self._path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class MemoryStore:
    """Entries in memory: for tests and for a CA that must not outlive the process."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.secret_names: set[str] = set()

    @property
    def location(self) -> str:
        return "memory"

    async def read(self, name: str) -> bytes | None:
        return self.entries.get(check_name(name))

    async def write(self, name: str, data: bytes, *, secret: bool = False) -> None:
        self.entries[check_name(name)] = data
        if secret:
            self.secret_names.add(name)
        else:
            self.secret_names.discard(name)

    async def delete(self, name: str) -> None:
        self.entries.pop(check_name(name), None)
        self.secret_names.discard(name)
