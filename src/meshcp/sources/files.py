"""Manifests from a directory, watched for changes: the embedded default source.

A directory of Kubernetes-style YAML/JSON is how a mesh is described without a cluster (and
how `meshcp lab` and the examples run). Editing it must behave like `kubectl apply` does
against a server that validates: a bad edit is reported where it is (`file:line`) and the
last good objects stay in force, so a half-saved file never tears the mesh down.

Two rules keep the source cheap and the event loop free (the loop also serves every xDS
stream):

- **Blocking work runs in the source's own worker thread**: listing the tree, stat, reading
  and parsing (`sources.manifests`, one small document at a time, so the thread never holds
  the GIL for long). The loop only merges notifications, hands a batch to the thread and
  applies what comes back. The thread works on immutable records of the files and returns
  new ones; the loop installs them, so a batch abandoned at shutdown changes nothing.
- **A change costs O(changed documents)**: a changed file is split into documents and only
  documents with new text are parsed (`sources.manifests`); a read names the objects whose
  documents changed, and only those are settled again (duplicates, invalid versions) and
  compared with what was published. A batch of notifications stats only the paths it
  names (a directory: what it holds); the periodic resync, and a Kubernetes atomic-writer
  swap (`..data`), list and stat the whole tree (in the thread) and read only the files
  whose stat changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

from watchfiles import awatch

from meshcp.model.meta import ObjectRef
from meshcp.model.state import MeshObject, Problem
from meshcp.sources import manifests
from meshcp.sources.events import Delete, Emit, Invalid, Resolved, Synced, Upsert
from meshcp.sources.manifests import Document, Manifests

log = logging.getLogger("meshcp.sources.files")

SUFFIXES = (".yaml", ".yml", ".json")
#: watchfiles: yield once the directory has been quiet this long (ms) ...
_QUIET_MS = 20
#: ... or at the latest this long (ms) after the first change (editors write in bursts).
_MAX_BATCH_MS = 200
#: The problem reported while the directory itself is gone.
_ROOT = ObjectRef("File", "", ".")

_T = TypeVar("_T")


class SourceError(Exception):
    """A source cannot start; the message says what to fix (here: the directory's path)."""


@dataclass(frozen=True, slots=True)
class _File:
    """One file as last read: its stat signature and what it contributes."""

    signature: tuple[int, int, int]
    manifests: Manifests = field(default_factory=Manifests)


@dataclass(frozen=True, slots=True)
class _Change:
    """A file read again (`record`) or gone (`record` is None), the objects it touched and
    those whose documents only moved (see `manifests.Read`)."""

    relative: str
    record: _File | None
    touched: frozenset[ObjectRef]
    moved: frozenset[ObjectRef] = frozenset()


@dataclass(frozen=True, slots=True)
class _Batch:
    """What the worker thread found for one batch of notifications."""

    root_missing: bool
    changes: tuple[_Change, ...] = ()
    parsed: int = 0


@dataclass(slots=True)
class _Published:
    """What the consumer has been told, so a re-read emits only differences."""

    objects: dict[ObjectRef, MeshObject] = field(default_factory=dict)
    problems: dict[ObjectRef, Problem] = field(default_factory=dict)


class _Worker:
    """The source's one thread for blocking work, and the flag that stops its current job."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"meshcp-{name}")
        self.stop = threading.Event()

    async def call(self, function: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def close(self) -> None:
        """Stop the job in progress at its next document; do not wait for it."""
        self.stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


class FileSource:
    """Reads `directory` recursively, emits its objects, reports `Synced(name)`, then watches.

    Files are read in path order; hidden files and directories (names starting with ".") are
    skipped, which also skips the `..data` copies of a mounted ConfigMap. When two files
    define the same object the one read first keeps it and the other is reported.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        emit: Emit,
        *,
        name: str = "files",
        retry_interval: float = 1.0,
        resync_interval: float = 30.0,
    ) -> None:
        """`retry_interval`: how often to look for the directory after it vanished.
        `resync_interval`: how often every file's stat is compared even without a
        notification, which covers events the OS dropped (inotify queue overflow) or polling
        missed (it sees modification times to the second)."""
        self.name = name
        self._root = Path(directory).absolute()
        self._emit = emit
        self._retry_interval = retry_interval
        self._resync_interval = resync_interval
        #: Documents parsed since start: a document whose text is unchanged is not parsed again.
        self.documents_parsed = 0
        self._files: dict[str, _File] = {}
        #: The files that have documents of an object (the documents are in the file's record).
        self._where: dict[ObjectRef, set[str]] = {}
        #: Problems of whole files (syntax, unreadable) and of the directory.
        self._file_problems: dict[ObjectRef, Problem] = {}
        #: The file whose definition of an object is in force.
        self._owners: dict[ObjectRef, str] = {}
        self._published = _Published()

    @property
    def directory(self) -> Path:
        return self._root

    async def run(self) -> None:
        """Read, report synced, and follow changes until cancelled."""
        worker = _Worker(self.name)
        try:
            if not await worker.call(self._root.is_dir):
                raise SourceError(f"manifest directory {self._root} does not exist or is not a directory")
            batches: asyncio.Queue[set[str] | None] = asyncio.Queue()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch(batches, worker))
                group.create_task(self._resync(batches))
                synced = False
                while True:
                    changed = await batches.get()
                    while not batches.empty():
                        more = batches.get_nowait()
                        changed = None if changed is None or more is None else changed | more
                    known = dict(self._files)
                    batch = await worker.call(partial(self._collect, changed, known, worker.stop))
                    self._apply(batch)
                    if not synced:
                        self._emit(Synced(self.name))
                        synced = True
        finally:
            worker.close()

    async def _watch(self, batches: asyncio.Queue[set[str] | None], worker: _Worker) -> None:
        """Feed changed paths to `run`; `None` asks for everything to be read again.

        The "read everything" request is queued right before `awatch` is entered: awatch sets up
        its OS watches in its first step, before it ever suspends, so `run` can only read after
        the watches exist and no write between the read and the watch is lost.
        """
        while True:
            batches.put_nowait(None)
            watcher = awatch(self._root, debounce=_MAX_BATCH_MS, step=_QUIET_MS, recursive=True)
            try:
                async with contextlib.aclosing(watcher):
                    async for changes in watcher:
                        batches.put_nowait({path for _, path in changes})
                        if not await worker.call(self._root.is_dir):
                            break
            except OSError as error:  # e.g. a subdirectory that may not be read
                log.warning(
                    "watching %s failed (%s); trying again in %gs", self._root, error, self._retry_interval
                )
                await asyncio.sleep(self._retry_interval)
            # The directory itself went away (and took the OS watches with it). Nothing can
            # notify its return, so look for it now and then.
            while not await worker.call(self._root.is_dir):  # noqa: ASYNC110
                await asyncio.sleep(self._retry_interval)

    async def _resync(self, batches: asyncio.Queue[set[str] | None]) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            # The root named: the whole tree is listed, and files whose stat changed are read.
            batches.put_nowait({str(self._root)})

    def _refresh(self, changed: set[str] | None) -> None:
        """One batch read and published in the calling thread (for one-shot readers that run
        no event loop); `None` reads every file."""
        self._apply(self._collect(changed, dict(self._files), threading.Event()))

    # --- reading: in the worker thread, on records it does not change ------------------------

    def _collect(self, changed: set[str] | None, known: Mapping[str, _File], stop: threading.Event) -> _Batch:
        """Read new files, changed files (by event or by stat) and note deleted ones.

        A batch of paths looks at those paths only (a directory: what it holds); it walks
        the whole tree when asked to (`None`, or the root among the paths: the resync) or
        when it cannot know which files changed (a Kubernetes atomic-writer swap)."""
        if not self._root.is_dir():
            return _Batch(root_missing=True)
        paths = self._paths(changed, known) if changed is not None else None
        if paths is None:
            paths = dict(_scan(self._root, self._root))
            gone = set(known.keys() - paths.keys())
        else:
            gone = set()
        signatures: dict[str, tuple[int, int, int]] = {}
        for relative, path in paths.items():
            try:
                signatures[relative] = _signature(path)
            except OSError:  # gone (or gone between listing and stat)
                if relative in known:
                    gone.add(relative)
        changes: list[_Change] = []
        # Pieces of files gone in this batch: a renamed (or split) file is not parsed again.
        spare: dict[bytes, manifests.Piece] = {}
        for relative in sorted(gone):
            changes.append(_gone(relative, known[relative]))
            if not relative.endswith(".json"):
                spare.update(known[relative].manifests.by_key)
        parsed = 0
        for relative, signature in sorted(signatures.items()):
            if stop.is_set():
                raise manifests.Stopped
            previous, path = known.get(relative), paths[relative]
            if previous is None or changed is None or str(path) in changed or previous.signature != signature:
                change, count = _read(relative, path, signature, previous, spare=spare, stop=stop)
                changes.append(change)
                parsed += count
        return _Batch(False, tuple(changes), parsed)

    def _paths(self, changed: set[str], known: Mapping[str, _File]) -> dict[str, Path] | None:
        """The manifest files that `changed` (paths from the watcher) may have touched, by
        relative name; None when only a walk of the whole tree can tell."""
        found: dict[str, Path] = {}
        for name in changed:
            path = Path(name)
            try:
                parts = path.relative_to(self._root).parts
            except ValueError:
                continue
            if not parts or any(part.startswith("..") for part in parts):
                # The root itself (the resync asks so), or Kubernetes' atomic writer swapping
                # `..data` under a mounted ConfigMap: the visible names are symlinks through
                # it and did not change themselves, only their stat tells.
                return None
            if any(part.startswith(".") for part in parts):
                continue  # hidden: never read (an editor's or `write`'s temporary file)
            relative = "/".join(parts)
            if path.is_dir():
                if not path.is_symlink():  # a directory made or moved in: what it holds
                    found.update(_scan(path, self._root))
            elif name.endswith(SUFFIXES):
                found[relative] = path
            if not path.is_file():
                # A directory removed, moved away or replaced takes its files with it.
                found.update(
                    (known_file, self._root / known_file)
                    for known_file in known
                    if known_file.startswith(f"{relative}/")
                )
        return found

    # --- publishing: on the loop, O(objects touched) ---------------------------------------------

    def _apply(self, batch: _Batch) -> None:
        self.documents_parsed += batch.parsed
        touched: set[ObjectRef] = set()
        if batch.root_missing:
            problem = Problem(
                _ROOT,
                "the manifest directory is gone; its last objects stay until it returns",
                str(self._root),
            )
            self._set_file_problem(_ROOT, problem, touched)
        else:
            self._set_file_problem(_ROOT, None, touched)
        for change in batch.changes:
            relative, record = change.relative, change.record
            file_ref = ObjectRef("File", "", relative)
            if record is None:
                self._files.pop(relative, None)
                self._set_file_problem(file_ref, None, touched)
            else:
                self._files[relative] = record
                self._set_file_problem(file_ref, record.manifests.syntax, touched)
            for ref in change.touched:
                if record is not None and record.manifests.documents_of(ref):
                    self._where.setdefault(ref, set()).add(relative)
                else:
                    files = self._where.get(ref)
                    if files is not None:
                        files.discard(relative)
                        if not files:
                            del self._where[ref]
            touched |= change.touched
            # A moved document is the same object: only a problem may cite its location.
            touched.update(ref for ref in change.moved if ref in self._published.problems)
        self._publish(touched)

    def _set_file_problem(self, ref: ObjectRef, problem: Problem | None, touched: set[ObjectRef]) -> None:
        if self._file_problems.get(ref) == problem:
            return
        if problem is None:
            del self._file_problems[ref]
        else:
            self._file_problems[ref] = problem
        touched.add(ref)

    def _settle(self, ref: ObjectRef) -> tuple[Document | None, Problem | None]:
        """The definition of `ref` in force and its problem, from every file that has it.

        An invalid document is reported (the first in path order); of the valid ones, the
        file that had the object keeps it, otherwise the first in path order, and the others
        are reported as duplicates."""
        problem = self._file_problems.get(ref)
        candidates: list[tuple[str, Document]] = []
        for relative in sorted(self._where.get(ref, ())):
            for doc in self._files[relative].manifests.documents_of(ref):
                if doc.obj is not None:
                    candidates.append((relative, doc))
                elif problem is None:
                    problem = Problem(ref, doc.reason, doc.location)
        if not candidates:
            self._owners.pop(ref, None)
            return None, problem
        owner = self._owners.get(ref)
        relative, chosen = next((c for c in candidates if c[0] == owner), candidates[0])
        self._owners[ref] = relative
        if problem is None:
            duplicate = next((doc for other, doc in candidates if other != relative), None)
            if duplicate is not None:
                reason = f"defined again; the definition at {chosen.location} is used"
                problem = Problem(ref, reason, duplicate.location)
        return chosen, problem

    def _publish(self, touched: set[ObjectRef]) -> None:
        published = self._published
        upserts: list[tuple[str, int, Upsert]] = []
        deletes: list[ObjectRef] = []
        resolved: list[ObjectRef] = []
        invalid: list[Problem] = []
        for ref in touched:
            chosen, problem = self._settle(ref)
            held = published.objects.get(ref)
            sent = False
            if chosen is not None and chosen.obj is not None:
                # A document whose text did not change keeps its very object: the identity
                # test spares comparing it field by field.
                if held is not chosen.obj and held != chosen.obj:
                    relative = self._owners[ref]
                    upserts.append((relative, chosen.line, Upsert(chosen.obj, chosen.location)))
                    sent = True
                published.objects[ref] = chosen.obj
            elif held is not None:
                deletes.append(ref)
                del published.objects[ref]
                sent = True
            before = published.problems.get(ref)
            if problem is None:
                if before is not None:
                    resolved.append(ref)
                    del published.problems[ref]
            # An Upsert or Delete clears a problem of its ref downstream: say it again if it stands.
            elif sent or before != problem:
                invalid.append(problem)
                published.problems[ref] = problem
        for *_, upsert in sorted(upserts, key=lambda item: item[:2]):
            self._emit(upsert)
        for ref in sorted(deletes):
            self._emit(Delete(ref))
        for ref in sorted(resolved):
            self._emit(Resolved(ref))
        for problem in sorted(invalid, key=lambda p: p.ref):
            self._emit(Invalid(problem))


def _scan(top: Path, root: Path) -> Iterator[tuple[str, Path]]:
    """The visible manifest files under `top`, named relative to `root`."""
    for directory, subdirectories, files in os.walk(top):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        for name in files:
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue
            path = Path(directory, name)
            yield path.relative_to(root).as_posix(), path


def _gone(relative: str, previous: _File) -> _Change:
    return _Change(relative, None, frozenset(previous.manifests.by_ref))


def _read(
    relative: str,
    path: Path,
    signature: tuple[int, int, int],
    previous: _File | None,
    *,
    spare: Mapping[bytes, manifests.Piece],
    stop: threading.Event,
) -> tuple[_Change, int]:
    """The file read again, and how many documents that parsed."""
    before = previous.manifests if previous is not None else Manifests()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _Change(relative, None, frozenset(before.by_ref)), 0
    except OSError as error:
        problem = Problem(
            ObjectRef("File", "", relative), f"cannot read: {error.strerror or error}", f"{relative}:1"
        )
        return _Change(relative, _File(signature, replace(before, syntax=problem)), frozenset()), 0
    result = manifests.read(
        relative, data, before, json_file=path.suffix == ".json", spare=spare, stopping=stop.is_set
    )
    return _Change(relative, _File(signature, result.manifests), result.touched, result.moved), result.parsed


def _signature(path: Path) -> tuple[int, int, int]:
    """Changes a file's content is very likely to change (stat follows symlinks, so a
    ConfigMap's `..data` swap shows up on the visible name)."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
