"""A file's bytes -> documents, parsing only what is new: the split at document markers reads
what YAML reads, unchanged documents keep their very objects, and a move only moves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcp.sources import manifests
from meshcp.sources.manifests import Document, Manifests, Read, read

EXAMPLES = Path(__file__).parents[2] / "examples"


def account(name: str, **labels: str) -> str:
    text = f"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: shop\n"
    if labels:
        text += "  labels:\n" + "".join(f'    {key}: "{value}"\n' for key, value in labels.items())
    return text


def documents(result: Read) -> list[Document]:
    return [doc for piece in result.manifests.pieces for doc in piece.documents]


def split_read(text: str, previous: Manifests | None = None) -> Read:
    return read("f.yaml", text.encode(), previous or Manifests(), json_file=False)


def one_pass(text: str) -> list[Document]:
    """What a single YAML pass over the whole text makes of it (the reference: no split)."""
    return manifests._documents("f.yaml", text, 1, json_file=False, stopping=lambda: False)


TRICKY = {
    "markers with content": "--- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n--- # note\n"
    + account("b"),
    "empty documents": "---\n---\n\n---\n" + account("a") + "---\n",
    "document end markers": account("a") + "...\n---\n" + account("b") + "...\n",
    "a block scalar with an indented marker": account("a")
    + "  annotations:\n    note: |\n      ---\n      --- not a document\n---\n"
    + account("b"),
    "markers that are not markers": account("a") + "  annotations:\n    x: '---x'\n---x: 1\n",
    "a directive": "%YAML 1.1\n---\n" + account("a") + "---\n" + account("b"),
    "CRLF line breaks": (account("a") + "---\n" + account("b")).replace("\n", "\r\n"),
    "a list": "apiVersion: v1\nkind: List\nitems:\n- "
    + account("a").replace("\n", "\n  ").rstrip()
    + "\n---\n"
    + account("b"),
    "a document that is no manifest": "- a\n- list\n---\n" + account("a") + "---\nplain\n",
    "comments only": "# nothing\n---\n# still nothing\n",
    "no final line break": account("a") + "---\n" + account("b").rstrip("\n"),
}


@pytest.mark.parametrize("text", TRICKY.values(), ids=TRICKY.keys())
def test_the_split_reads_what_one_yaml_pass_reads(text: str) -> None:
    assert documents(split_read(text)) == one_pass(text)


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_read_the_same_split(path: Path) -> None:
    text = path.read_text()
    assert documents(split_read(text)) == one_pass(text)


def test_a_marker_inside_a_quoted_scalar_is_an_error_either_way() -> None:
    text = account("a") + '  annotations:\n    x: "one\n---\n    two"\n'
    result = split_read(text)
    assert result.manifests.syntax is not None
    assert result.manifests.syntax.reason.startswith("invalid YAML: ")


def test_only_new_documents_are_parsed_and_unchanged_ones_keep_their_objects() -> None:
    texts = [account(f"svc-{i}") for i in range(10)]
    first = split_read("---\n".join(texts))
    assert first.parsed == 10

    texts[4] = account("svc-4", tier="x")
    second = split_read("---\n".join(texts), first.manifests)
    assert second.parsed == 1
    assert [ref.name for ref in second.touched] == ["svc-4"]
    assert sorted(ref.name for ref in second.moved) == [f"svc-{i}" for i in range(5, 10)]  # a line down
    before, after = documents(first), documents(second)
    assert all(after[i] is before[i] for i in range(4))  # in place: the very documents
    assert all(after[i].obj is before[i].obj for i in range(5, 10))  # moved: the very objects


def test_a_moved_document_is_not_parsed_again_and_its_location_follows() -> None:
    texts = [account(f"svc-{i}") for i in range(3)] + ["- not a manifest\n"]
    first = split_read("---\n".join(texts))
    # One line more above everything: the first piece changed, the others only moved.
    second = split_read("---\n# moved\n" + "---\n".join(texts), first.manifests)
    assert second.parsed == 1
    assert [(doc.ref.name, doc.location) for doc in documents(second)] == [
        ("svc-0", "f.yaml:3"),
        ("svc-1", "f.yaml:9"),
        ("svc-2", "f.yaml:15"),
        ("f.yaml:21", "f.yaml:21"),  # a document nothing names is known by its location
    ]
    objects = [doc.obj for doc in documents(first)]
    assert [doc.obj for doc in documents(second)][1:3] == objects[1:3]
    assert all(a is b for a, b in zip(objects[1:3], [doc.obj for doc in documents(second)][1:3], strict=True))
    assert documents(second) == one_pass("---\n# moved\n" + "---\n".join(texts))


def test_pieces_of_a_file_gone_are_reused_by_another() -> None:
    text = "---\n".join(account(f"svc-{i}") for i in range(5))
    old = read("old.yaml", text.encode(), Manifests(), json_file=False)
    moved = read("new.yaml", text.encode(), Manifests(), json_file=False, spare=old.manifests.by_key)
    assert moved.parsed == 0
    assert [doc.location for doc in documents(moved)] == [f"new.yaml:{1 + 6 * i}" for i in range(5)]


def test_a_syntax_error_keeps_the_last_good_documents() -> None:
    good = split_read(account("a") + "---\n" + account("b"))
    bad = split_read(account("a") + "---\n" + account("b") + "  labels: x: y\n", good.manifests)
    assert bad.touched == frozenset()
    assert bad.manifests.syntax is not None and bad.manifests.syntax.location == "f.yaml:12"
    assert bad.manifests.pieces == good.manifests.pieces
    fixed = split_read(account("a") + "---\n" + account("b", tier="x"), bad.manifests)
    assert fixed.manifests.syntax is None
    assert [ref.name for ref in fixed.touched] == ["b"]


def test_an_invalid_version_keeps_the_last_good_one() -> None:
    good = split_read(account("a"))
    (kept,) = documents(good)
    bad = split_read(account("a") + "  labels:\n    n: 2\n", good.manifests)
    ref = kept.ref
    assert [doc.obj for doc in bad.manifests.documents_of(ref)] == [None, kept.obj]
    still = split_read(account("a") + "  labels:\n    n: 3\n", bad.manifests)
    assert still.manifests.documents_of(ref)[-1] is kept
    fixed = split_read(account("a", n="3"), still.manifests)
    assert [doc.obj is not None for doc in fixed.manifests.documents_of(ref)] == [True]


def test_an_invalid_field_is_located_at_its_line_and_follows_a_move() -> None:
    """A problem points at the field it names (in a document or a `kind: List` item), and
    keeps pointing at it when the document moves."""
    bad = account("web") + "  labels:\n    version: 2\n"
    listed = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: ServiceAccount\n  metadata:\n    name: api\n    namespace: shop\n"
        "    labels:\n      tier: 3\n"
    )
    first = split_read(account("ok") + "---\n" + bad + "---\n" + listed)
    where = {doc.ref.name: doc.location for doc in documents(first) if doc.obj is None}
    assert where == {"web": "f.yaml:13", "api": "f.yaml:24"}  # `version: 2`, `tier: 3`
    moved = split_read(
        "# a comment\n# and another\n" + account("ok") + "---\n" + bad + "---\n" + listed, first.manifests
    )
    where = {doc.ref.name: doc.location for doc in documents(moved) if doc.obj is None}
    assert where == {"web": "f.yaml:15", "api": "f.yaml:26"}
