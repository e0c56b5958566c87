"""Where in a manifest file a field is: the line of `spec.ports[0].port` in the document
that starts at a given line, so that a problem points at the field, not at the document.

Pure: it is handed the file's text. The path is the one `model.fields.Field` names fields
by; map keys may themselves hold dots (`metadata.labels.meshcp.dev/proxy-uuid`), so each
step matches the longest key the mapping really has. A path that goes further than the
document (a field left out, whose default is wrong) stops at the deepest part that is
there: the closest line that says something about it.
"""

from __future__ import annotations

import re

import yaml

_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INDEX = re.compile(r"\[(\d+)\]")
#: A field path as problems start with it: `spec.rules[0].name: ...`.
_PATH = re.compile(r"^([A-Za-z_][\w.\-/]*(?:\[\d+\][\w.\-/]*)*): ")


def path_of(reason: str) -> str:
    """The field path a problem's reason starts with (`spec.ports[0].port: ...`), or ""."""
    match = _PATH.match(reason)
    return match.group(1) if match else ""


def field_line(text: str, document_line: int, path: str) -> int:
    """The 1-based line of `path` in the document (or `kind: List` item) whose content
    starts at `document_line`; `document_line` itself when the text cannot tell."""
    if not path:
        return document_line
    try:
        root = _node_at(text, document_line)
    except yaml.YAMLError:
        return document_line
    if root is None:
        return document_line
    return node_field_line(root, path)


def node_field_line(root: yaml.Node, path: str) -> int:
    """The 1-based line of `path` in a composed YAML document (its marks count lines from 0
    of the text it was composed from: the file's, or add the offset of a part of it)."""
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    rest = path
    while rest and node is not None:
        rest = rest.lstrip(".")
        index = _INDEX.match(rest)
        if index is not None:
            rest = rest[index.end() :]
            position = int(index.group(1))
            if not isinstance(node, yaml.SequenceNode) or position >= len(node.value):
                break
            node = node.value[position]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        found = _longest_key(node, rest)
        if found is None:
            break
        key, value, consumed = found
        rest = rest[consumed:]
        node = value
        line = key.start_mark.line + 1
    return line


def _longest_key(node: yaml.MappingNode, rest: str) -> tuple[yaml.Node, yaml.Node, int] | None:
    best: tuple[yaml.Node, yaml.Node, int] | None = None
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if not isinstance(name, str) or not rest.startswith(name):
            continue
        after = rest[len(name) :]
        if after and after[0] not in ".[":
            continue
        if best is None or len(name) > best[2]:
            best = (key, value, len(name))
    return best


def _node_at(text: str, document_line: int) -> yaml.Node | None:
    """The document, or `List` item, whose node starts on `document_line`."""
    for document in yaml.compose_all(text, Loader=_LOADER):
        if document is None:
            continue
        if document.start_mark.line + 1 == document_line:
            found: yaml.Node = document
            return found
        if isinstance(document, yaml.MappingNode):
            for key, value in document.value:
                if (
                    isinstance(key, yaml.ScalarNode)
                    and key.value == "items"
                    and isinstance(value, yaml.SequenceNode)
                ):
                    for item in value.value:
                        if item.start_mark.line + 1 == document_line:
                            node: yaml.Node = item
                            return node
    return None
