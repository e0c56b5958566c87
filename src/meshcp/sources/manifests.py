"""A manifest file's bytes -> its documents, parsing only the documents whose text is new.

Pure (no I/O): `sources.files` reads the bytes (in a worker thread) and hands them here with
what the file held after its previous read. Many users keep a whole mesh in one
multi-document file (`kubectl apply -f mesh.yaml`), so the cost of an edit must follow the
documents it changed, not the size of the file. A read therefore

1. splits the bytes into *pieces* at document-start markers (`---` at the start of a line,
   followed by a space, a tab, a line break or the end) — a byte search, no YAML parsing;
2. looks each piece up, by its bytes (hashed by the dictionary; equal keys are compared byte
   for byte, so no collision can mix two texts up), among the pieces of the previous read
   (and of files that went away in the same batch, so a renamed file is not parsed again);
3. parses only the pieces it has not seen: YAML and then `model.parse.parse_object`.
   Consecutive new pieces share one YAML loader (so a first read costs what one pass over
   the file costs), which still hands back one document at a time: a worker thread that
   parses returns to Python, and lets the event loop's thread take the GIL, between
   documents.

Why splitting at `---` is safe: YAML forbids a line that starts with a document marker
inside any scalar or collection of a document (YAML 1.2, "c-forbidden"; PyYAML and libyaml
scan `---` at column 0 as a document start, or fail, in every context), so such a line
always starts a new document, and YAML documents do not share state: anchors end with
their document, and without directives nothing else carries over. Two rules keep the split
from ever separating what YAML reads together:

- a file with a directive (a line starting with `%`, e.g. `%YAML 1.1`, which applies to the
  document after it) is one piece, as is a JSON file (one value);
- the split may find *fewer* document starts than YAML does (after a lone `\\r` line break
  or a BOM), never more; a piece may hold several documents and they are read as YAML reads
  them.

A piece that reappears at another line keeps its parsed objects and only moves their
locations, so the object stays the very same instance and nothing downstream sees a change.
A syntax error anywhere still rejects the whole file (its last good documents stay), and an
invalid version of an object keeps the file's last good version of it, as before.
Not made cheaper: one huge document (a `kind: List` of thousands of items, a big JSON file)
is still one piece, parsed whole when it changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import yaml

from meshcp.model.locate import node_field_line, path_of
from meshcp.model.meta import ObjectRef
from meshcp.model.parse import InvalidObject, parse_object
from meshcp.model.state import MeshObject, Problem

#: libyaml when PyYAML was built with it: several times faster on large directories.
_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Where a document surely starts: `---` after a line break, then a blank, a break or the end
#: (a literal prefix, so the search runs at memchr speed; a marker on line 1 needs no split).
_DOCUMENT_START = re.compile(rb"\n---(?=[ \t\r\n]|\Z)")


class ManifestSyntaxError(Exception):
    """The file is not YAML (or JSON, or UTF-8); `line` is where in the file."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class Stopped(Exception):
    """`read` was asked to stop (its source is shutting down); nothing it did is kept."""


@dataclass(frozen=True, slots=True)
class Document:
    """One manifest of a file: the object, or why it is not one."""

    ref: ObjectRef
    line: int
    location: str
    obj: MeshObject | None
    reason: str = ""
    #: Nothing names it, so `ref` is made from its location (and moves with it).
    anonymous: bool = False
    #: Lines from the document's start to the field `reason` names (`location` points there).
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of a file's bytes from one document start to the next (`key`: those bytes), its
    first line and what it parsed into."""

    key: bytes
    line: int
    documents: tuple[Document, ...]


_NO_PIECES: Mapping[bytes, Piece] = MappingProxyType({})
#: A manifest, the line it starts at, and where a field path of it is (`_locator`).
Manifest = tuple[Any, int, Callable[[str], int]]


@dataclass(frozen=True, slots=True)
class Manifests:
    """What one file contributes, as of its last good read. Immutable: a read makes a new one."""

    #: The file's pieces in order.
    pieces: tuple[Piece, ...] = ()
    #: Their documents by object (an object may be defined more than once in a file).
    by_ref: Mapping[ObjectRef, tuple[Document, ...]] = field(default_factory=dict)
    #: The last good version of an object whose document is invalid now.
    kept: Mapping[ObjectRef, Document] = field(default_factory=dict)
    #: Why the file could not be read now (all else is from the last good read).
    syntax: Problem | None = None
    #: Parsed pieces by their bytes, for the next read (with those of a failed read).
    by_key: Mapping[bytes, Piece] = field(default_factory=dict)

    def documents_of(self, ref: ObjectRef) -> tuple[Document, ...]:
        """The file's documents of `ref` in order, then its kept last good version."""
        documents = self.by_ref.get(ref, ())
        kept = self.kept.get(ref)
        return documents if kept is None else (*documents, kept)


@dataclass(frozen=True, slots=True)
class Read:
    """The outcome of reading one file."""

    manifests: Manifests
    #: Documents parsed by this read (pieces whose text was not seen before).
    parsed: int
    #: Objects whose documents in this file differ from the previous read's (added, removed,
    #: another object or another problem).
    touched: frozenset[ObjectRef]
    #: Objects whose documents only moved to other lines: the same objects, new locations.
    moved: frozenset[ObjectRef] = frozenset()


def read(
    relative: str,
    data: bytes,
    previous: Manifests,
    *,
    json_file: bool,
    spare: Mapping[bytes, Piece] = _NO_PIECES,
    stopping: Callable[[], bool] = lambda: False,
) -> Read:
    """`data`, the content of the file at `relative`, given what it held before (`previous`).

    `spare`: more parsed YAML pieces to reuse (those of files gone in the same batch).
    `stopping` is asked between documents; when it says yes, `Stopped` is raised. The cost is
    a byte search and a dictionary look-up per piece, plus parsing the new pieces; the work
    that follows (which objects changed, the file's index by object) is proportional to the
    pieces that changed."""
    old = {id(piece) for piece in previous.pieces}
    entries: list[Piece | _New] = []
    for start, end, line in _split(data, json_file=json_file):
        key = data[start:end]
        known = previous.by_key.get(key)
        if known is None and not json_file:
            # Another file's: its documents move to this file, wherever they were.
            known = spare.get(key)
            if known is not None:
                known = _placed(known, relative, line)
        if known is None:
            entries.append(_New(key, start, end, line))
        else:
            entries.append(known if known.line == line else _placed(known, relative, line))
    try:
        pieces, parsed = _parse_new(relative, data, entries, json_file=json_file, stopping=stopping)
    except ManifestSyntaxError as error:
        problem = Problem(ObjectRef("File", "", relative), error.reason, f"{relative}:{error.line}")
        by_key = {
            **previous.by_key,
            **{e.key: e for e in entries if isinstance(e, Piece) and id(e) not in old},
        }
        return Read(replace(previous, syntax=problem, by_key=by_key), 0, frozenset())
    fresh = [piece for piece in pieces if id(piece) not in old]  # parsed, moved or another file's
    kept_pieces = {id(piece) for piece in pieces}
    removed = [doc for piece in previous.pieces if id(piece) not in kept_pieces for doc in piece.documents]
    added: dict[ObjectRef, list[Document]] = {}
    for piece in fresh:
        for doc in piece.documents:
            added.setdefault(doc.ref, []).append(doc)
    changed = added.keys() | {doc.ref for doc in removed}
    gone = {id(doc) for doc in removed}
    by_ref = dict(previous.by_ref)
    kept = dict(previous.kept)
    for ref in changed:
        documents = [doc for doc in previous.by_ref.get(ref, ()) if id(doc) not in gone]
        documents = sorted(documents + added.get(ref, []), key=lambda doc: doc.line)
        if documents:
            by_ref[ref] = tuple(documents)
        else:
            del by_ref[ref]
        # An object whose new version is invalid keeps its last good version from this file.
        last_good = previous.kept.get(ref) or next(
            (doc for doc in reversed(previous.by_ref.get(ref, ())) if doc.obj is not None), None
        )
        if last_good is not None and any(doc.obj is None for doc in documents):
            kept[ref] = last_good
        else:
            kept.pop(ref, None)
    manifests = Manifests(tuple(pieces), by_ref, kept, None, {piece.key: piece for piece in pieces})
    moved = frozenset(
        ref for ref in changed if _same(previous.documents_of(ref), manifests.documents_of(ref))
    )
    return Read(manifests, parsed, frozenset(changed - moved), moved)


def _same(before: tuple[Document, ...], after: tuple[Document, ...]) -> bool:
    """The same objects and problems, wherever they are."""
    return len(before) == len(after) and all(
        a.obj is b.obj and a.ref == b.ref and a.reason == b.reason for a, b in zip(before, after, strict=True)
    )


@dataclass(frozen=True, slots=True)
class _New:
    """A piece not seen before: where its bytes are."""

    key: bytes
    start: int
    end: int
    line: int


def _parse_new(
    relative: str, data: bytes, entries: list[Piece | _New], *, json_file: bool, stopping: Callable[[], bool]
) -> tuple[list[Piece], int]:
    """`entries` with every new piece parsed, and how many documents that made.

    Consecutive new pieces are parsed as one text (one YAML loader, which is what a first read
    of a big file costs, not one per document) and their documents handed back to the piece
    whose lines hold them; the loader still returns to Python after every document."""
    pieces: list[Piece] = []
    parsed = 0
    at = 0
    while at < len(entries):
        entry = entries[at]
        if isinstance(entry, Piece):
            pieces.append(entry)
            at += 1
            continue
        run: list[_New] = []
        while at < len(entries) and isinstance(new := entries[at], _New):
            run.append(new)
            at += 1
        text = _decode(data, run[0].start, run[-1].end, run[0].line)
        documents = _documents(relative, text, run[0].line, json_file=json_file, stopping=stopping)
        parsed += len(documents)
        taken = 0
        for index, new in enumerate(run):
            limit = run[index + 1].line if index + 1 < len(run) else None
            first = taken
            while taken < len(documents) and (limit is None or documents[taken].line < limit):
                taken += 1
            pieces.append(Piece(new.key, new.line, tuple(documents[first:taken])))
    return pieces, parsed


def _split(data: bytes, *, json_file: bool) -> Iterator[tuple[int, int, int]]:
    """(start, end, first line) of each piece of `data`."""
    if json_file or data.startswith(b"%") or b"\n%" in data:
        yield 0, len(data), 1
        return
    line, start = 1, 0
    for match in _DOCUMENT_START.finditer(data):
        at = match.start() + 1  # after the line break
        yield start, at, line
        line += data.count(b"\n", start, at)
        start = at
    yield start, len(data), line


def _decode(data: bytes, start: int, end: int, line: int) -> str:
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError as error:
        at = line + data.count(b"\n", start, start + error.start)
        raise ManifestSyntaxError(at, "not UTF-8 text") from None


def _placed(piece: Piece, relative: str, line: int) -> Piece:
    """`piece` found again at `line` of `relative`: the same objects at new locations."""
    return Piece(piece.key, line, tuple(_moved(doc, relative, line - piece.line) for doc in piece.documents))


def _moved(doc: Document, relative: str, by: int) -> Document:
    line = doc.line + by
    ref = ObjectRef(doc.ref.kind, doc.ref.namespace, f"{relative}:{line}") if doc.anonymous else doc.ref
    return replace(doc, ref=ref, line=line, location=f"{relative}:{line + doc.offset}")


def _documents(
    relative: str, text: str, first_line: int, *, json_file: bool, stopping: Callable[[], bool]
) -> list[Document]:
    manifests = _json_manifests(text) if json_file else _yaml_manifests(text, first_line, stopping)
    documents: list[Document] = []
    for manifest, line, locate in manifests:
        location = f"{relative}:{line}"
        try:
            obj = parse_object(manifest)
        except InvalidObject as error:
            # The problem points at the field it names, not at the document's first line.
            offset = locate(path_of(error.reason)) - line
            at = f"{relative}:{line + offset}"
            ref = error.ref
            if ref.kind and ref.name:
                documents.append(Document(ref, line, at, None, error.reason, offset=offset))
            else:
                # Nothing names it: the location does, so two such documents stay apart.
                ref = ObjectRef(ref.kind or "Document", ref.namespace, location)
                documents.append(Document(ref, line, at, None, error.reason, anonymous=True, offset=offset))
        else:
            documents.append(Document(obj.ref, line, location, obj))
    return documents


def _yaml_manifests(text: str, first_line: int, stopping: Callable[[], bool]) -> list[Manifest]:
    """(manifest, line in the file) per document; a `List` contributes its items. Everything
    is parsed before anything is returned, so a syntax error rejects the whole text."""
    found: list[Manifest] = []
    loader = _LOADER(text)
    try:
        while loader.check_node():
            if stopping():
                raise Stopped
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            if data is not None:
                found.extend(_expand_list(data, first_line + node.start_mark.line, node, first_line))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = first_line + (mark.line if mark else 0)
        raise ManifestSyntaxError(line, f"invalid YAML: {_yaml_reason(error)}") from None
    except yaml.YAMLError as error:
        raise ManifestSyntaxError(first_line, f"invalid YAML: {error}") from None
    finally:
        loader.dispose()
    return found


def _yaml_reason(error: yaml.MarkedYAMLError) -> str:
    parts = [part for part in (error.context, error.problem) if part]
    return ": ".join(parts) or "syntax error"


def _json_manifests(text: str) -> list[Manifest]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestSyntaxError(error.lineno, f"invalid JSON: {error.msg}") from None
    node: yaml.Node | None = None
    if _is_list(data):
        # json keeps no positions; YAML (a JSON superset for this purpose) finds each item's line.
        try:
            node = yaml.compose(text, Loader=_LOADER)
        except yaml.YAMLError:
            node = None
    return _expand_list(data, 1, node, 1)


def _is_list(data: Any) -> bool:
    return isinstance(data, Mapping) and data.get("kind") == "List" and isinstance(data.get("items"), list)


def _expand_list(data: Any, line: int, node: yaml.Node | None, base: int) -> list[Manifest]:
    """A `kind: List` (what `kubectl get -o yaml` writes) stands for its items; `node` is
    where YAML found it, its marks counting lines from `base`."""
    if not _is_list(data):
        return [(data, line, _locator(node, base, line))]
    items: list[Any] = data["items"]
    found = [(item, line, _locator(None, base, line)) for item in items]
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            is_items = isinstance(key, yaml.ScalarNode) and key.value == "items"
            if is_items and isinstance(value, yaml.SequenceNode) and len(value.value) == len(items):
                found = [
                    (item, base + at.start_mark.line, _locator(at, base, base + at.start_mark.line))
                    for item, at in zip(items, value.value, strict=True)
                ]
    return found


def _locator(node: yaml.Node | None, base: int, line: int) -> Callable[[str], int]:
    """The line of a field path in the manifest `node` (marks counting from `base`), or
    `line` (the manifest's) when there is no node or no path."""

    def locate(path: str) -> int:
        if node is None or not path:
            return line
        return base - 1 + node_field_line(node, path)

    return locate
