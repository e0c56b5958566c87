"""Manifests from a directory, watched for changes: the embedded default source.

A directory of Kubernetes-style YAML/JSON is how a mesh is described without a cluster (and
how `meshcp lab` and the examples run). Editing it must behave like `kubectl apply` does
against a server that validates: a bad edit is reported where it is (`file:line`) and the
last good objects stay in force, so a half-saved file never tears the mesh down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from watchfiles import awatch

from meshcp.model.meta import ObjectRef
from meshcp.model.parse import InvalidObject, parse_object
from meshcp.model.state import MeshObject, Problem
from meshcp.sources.events import Delete, Emit, Invalid, Resolved, Synced, Upsert

log = logging.getLogger("meshcp.sources.files")

SUFFIXES = (".yaml", ".yml", ".json")
#: watchfiles: yield once the directory has been quiet this long (ms) ...
_QUIET_MS = 20
#: ... or at the latest this long (ms) after the first change (editors write in bursts).
_MAX_BATCH_MS = 200
#: libyaml when PyYAML was built with it: several times faster on large directories.
_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SourceError(Exception):
    """A source cannot start; the message says what to fix (here: the directory's path)."""


@dataclass(frozen=True, slots=True)
class _Document:
    """One manifest of a file: the object, or why it is not one."""

    ref: ObjectRef
    location: str
    obj: MeshObject | None
    reason: str = ""


@dataclass(slots=True)
class _File:
    """What one file last contributed. After a syntax error `documents` stay those of the last
    good read, and `syntax` says what is wrong now."""

    signature: tuple[int, int, int]
    documents: tuple[_Document, ...] = ()
    syntax: Problem | None = None


class _SyntaxError(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


@dataclass(slots=True)
class _Published:
    """What the consumer has been told, so a re-read emits only differences."""

    objects: dict[ObjectRef, MeshObject] = field(default_factory=dict)
    problems: dict[ObjectRef, Problem] = field(default_factory=dict)


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
        self._files: dict[str, _File] = {}
        self._owners: dict[ObjectRef, str] = {}
        self._published = _Published()
        self._root_missing = False

    @property
    def directory(self) -> Path:
        return self._root

    async def run(self) -> None:
        """Read, report synced, and follow changes until cancelled."""
        if not self._root.is_dir():
            raise SourceError(f"manifest directory {self._root} does not exist or is not a directory")
        batches: asyncio.Queue[set[str] | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(batches))
            group.create_task(self._resync(batches))
            synced = False
            while True:
                batch = await batches.get()
                while not batches.empty():
                    more = batches.get_nowait()
                    batch = None if batch is None or more is None else batch | more
                self._refresh(batch)
                if not synced:
                    self._emit(Synced(self.name))
                    synced = True

    async def _watch(self, batches: asyncio.Queue[set[str] | None]) -> None:
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
                        if not self._root.is_dir():
                            break
            except OSError as error:  # e.g. a subdirectory that may not be read
                log.warning(
                    "watching %s failed (%s); trying again in %gs", self._root, error, self._retry_interval
                )
                await asyncio.sleep(self._retry_interval)
            # The directory itself went away (and took the OS watches with it). Nothing can
            # notify its return, so look for it now and then.
            while not self._root.is_dir():  # noqa: ASYNC110
                await asyncio.sleep(self._retry_interval)

    async def _resync(self, batches: asyncio.Queue[set[str] | None]) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            batches.put_nowait(set())  # no path named: only files whose stat changed are read

    # --- reading ----------------------------------------------------------------------------

    def _refresh(self, changed: set[str] | None) -> None:
        """Re-read new files, changed files (by event or by stat) and forget deleted ones."""
        if not self._root.is_dir():
            self._root_missing = True
            self._publish()
            return
        self._root_missing = False
        listing = dict(self._scan())
        for relative in self._files.keys() - listing.keys():
            del self._files[relative]
        for relative, path in sorted(listing.items()):
            try:
                signature = _signature(path)
            except OSError:
                self._files.pop(relative, None)  # gone between listing and stat
                continue
            known = self._files.get(relative)
            if known is None or changed is None or str(path) in changed or known.signature != signature:
                self._read(relative, path, signature)
        self._publish()

    def _scan(self) -> Iterator[tuple[str, Path]]:
        for directory, subdirectories, files in os.walk(self._root):
            subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
            for name in files:
                if name.startswith(".") or not name.endswith(SUFFIXES):
                    continue
                path = Path(directory, name)
                yield path.relative_to(self._root).as_posix(), path

    def _read(self, relative: str, path: Path, signature: tuple[int, int, int]) -> None:
        previous = self._files.get(relative)
        record = _File(signature, previous.documents if previous else ())
        self._files[relative] = record
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            del self._files[relative]
            return
        except OSError as error:
            record.syntax = _file_problem(relative, 1, f"cannot read: {error.strerror or error}")
            return
        try:
            text = data.decode("utf-8")
            documents = list(_documents(relative, text, json_file=path.suffix == ".json"))
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            record.syntax = _file_problem(relative, line, "not UTF-8 text")
            return
        except _SyntaxError as error:
            record.syntax = _file_problem(relative, error.line, error.reason)
            return
        # An object whose new version is invalid keeps its last good version from this file.
        kept = {doc.ref: doc for doc in record.documents if doc.obj is not None}
        for doc in list(documents):
            if doc.obj is None and doc.ref in kept:
                documents.append(kept[doc.ref])
        record.documents = tuple(documents)

    # --- publishing -------------------------------------------------------------------------

    def _desired(self) -> tuple[dict[ObjectRef, tuple[MeshObject, str]], dict[ObjectRef, Problem]]:
        """The objects and problems the files describe now, after duplicates are settled."""
        problems: dict[ObjectRef, Problem] = {}
        definitions: dict[ObjectRef, list[tuple[str, MeshObject, str]]] = {}
        if self._root_missing:
            ref = ObjectRef("File", "", ".")
            problems[ref] = Problem(
                ref, "the manifest directory is gone; its last objects stay until it returns", str(self._root)
            )
        for relative in sorted(self._files):
            record = self._files[relative]
            if record.syntax is not None:
                problems[record.syntax.ref] = record.syntax
            for doc in record.documents:
                if doc.obj is None:
                    problems.setdefault(doc.ref, Problem(doc.ref, doc.reason, doc.location))
                else:
                    definitions.setdefault(doc.ref, []).append((relative, doc.obj, doc.location))
        objects: dict[ObjectRef, tuple[MeshObject, str]] = {}
        owners: dict[ObjectRef, str] = {}
        for ref, candidates in definitions.items():
            # The file that had it keeps it; otherwise the first in path order.
            owner = self._owners.get(ref)
            relative, obj, location = next((c for c in candidates if c[0] == owner), candidates[0])
            objects[ref], owners[ref] = (obj, location), relative
            for other_relative, _, other_location in candidates:
                if other_relative != relative:
                    reason = f"defined again; the definition at {location} is used"
                    problems.setdefault(ref, Problem(ref, reason, other_location))
        self._owners = owners
        return objects, problems

    def _publish(self) -> None:
        objects, problems = self._desired()
        published = self._published
        touched: set[ObjectRef] = set()
        for ref, (obj, location) in objects.items():
            # Objects of unchanged files are the very objects published last time: the
            # identity test spares comparing thousands of them field by field per change.
            held = published.objects.get(ref)
            if held is not obj and held != obj:
                self._emit(Upsert(obj, location))
                touched.add(ref)
        for ref in sorted(published.objects.keys() - objects.keys()):
            self._emit(Delete(ref))
            touched.add(ref)
        for ref in sorted(published.problems.keys() - problems.keys()):
            self._emit(Resolved(ref))
        # An Upsert or Delete clears a problem of its ref downstream: say it again if it stands.
        for ref in sorted(problems):
            if ref in touched or published.problems.get(ref) != problems[ref]:
                self._emit(Invalid(problems[ref]))
        published.objects = {ref: obj for ref, (obj, _) in objects.items()}
        published.problems = problems


def _signature(path: Path) -> tuple[int, int, int]:
    """Changes a file's content is very likely to change (stat follows symlinks, so a
    ConfigMap's `..data` swap shows up on the visible name)."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _file_problem(relative: str, line: int, reason: str) -> Problem:
    return Problem(ObjectRef("File", "", relative), reason, f"{relative}:{line}")


def _documents(relative: str, text: str, *, json_file: bool) -> Iterator[_Document]:
    manifests = _json_manifests(text) if json_file else _yaml_manifests(text)
    for manifest, line in manifests:
        location = f"{relative}:{line}"
        try:
            obj = parse_object(manifest)
        except InvalidObject as error:
            ref = error.ref
            if not (ref.kind and ref.name):
                # Nothing names it: the location does, so two such documents stay apart.
                ref = ObjectRef(ref.kind or "Document", ref.namespace, location)
            yield _Document(ref, location, None, error.reason)
        else:
            yield _Document(obj.ref, location, obj)


def _yaml_manifests(text: str) -> Iterator[tuple[Any, int]]:
    """(manifest, first line) per document; a `List` contributes its items. Everything is
    parsed before anything is yielded, so a syntax error anywhere rejects the whole file."""
    found: list[tuple[Any, int]] = []
    loader = _LOADER(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            if data is not None:
                found.extend(_expand_list(data, node.start_mark.line + 1, node))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise _SyntaxError(mark.line + 1 if mark else 1, f"invalid YAML: {_yaml_reason(error)}") from None
    except yaml.YAMLError as error:
        raise _SyntaxError(1, f"invalid YAML: {error}") from None
    finally:
        loader.dispose()
    return iter(found)


def _yaml_reason(error: yaml.MarkedYAMLError) -> str:
    parts = [part for part in (error.context, error.problem) if part]
    return ": ".join(parts) or "syntax error"


def _json_manifests(text: str) -> Iterator[tuple[Any, int]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _SyntaxError(error.lineno, f"invalid JSON: {error.msg}") from None
    node: yaml.Node | None = None
    if _is_list(data):
        # json keeps no positions; YAML (a JSON superset for this purpose) finds each item's line.
        try:
            node = yaml.compose(text, Loader=_LOADER)
        except yaml.YAMLError:
            node = None
    return iter(_expand_list(data, 1, node))


def _is_list(data: Any) -> bool:
    return isinstance(data, Mapping) and data.get("kind") == "List" and isinstance(data.get("items"), list)


def _expand_list(data: Any, line: int, node: yaml.Node | None) -> list[tuple[Any, int]]:
    """A `kind: List` (what `kubectl get -o yaml` writes) stands for its items."""
    if not _is_list(data):
        return [(data, line)]
    items: list[Any] = data["items"]
    lines = [line] * len(items)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            is_items = isinstance(key, yaml.ScalarNode) and key.value == "items"
            if is_items and isinstance(value, yaml.SequenceNode) and len(value.value) == len(items):
                lines = [item.start_mark.line + 1 for item in value.value]
    return list(zip(items, lines, strict=True))
