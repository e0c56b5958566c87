"""How every command prints: `-o table` (aligned columns, for lists), `-o json`, `-o yaml`.

One function per shape, so that the same data reads the same in each format and every
command spells its choices the same way.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import yaml

#: What `-o` accepts everywhere; a command that prints no list has no table form.
FORMATS = ("table", "json", "yaml")
#: Older spellings still accepted (hidden): `text` was the table form of `ca` and `lab status`.
ALIASES = {"text": "table"}


def dumps(data: Any, output: str) -> str:
    """`data` as JSON (indented) or YAML (block style, keys in their order)."""
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return json.dumps(data, indent=2) + "\n"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the first row is the header."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    return "".join(line + "\n" for line in lines)


def emit(
    data: Any,
    output: str,
    as_table: Callable[[], Sequence[Sequence[str]] | str],
    out: TextIO | None = None,
) -> None:
    """Print `data` in `output`'s format; `as_table` makes the table form (rows, or text)."""
    stream = out or sys.stdout
    if output in ("json", "yaml"):
        stream.write(dumps(data, output))
        return
    shown = as_table()
    stream.write(shown if isinstance(shown, str) else table(shown))


def cell(value: Any) -> str:
    """A value as a table shows it: `-` for nothing."""
    if value is None or value == "":
        return "-"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value)
    return str(value)
