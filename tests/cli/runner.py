"""Running `meshcp` in the test process (`main()` with its output captured): the real
parser and commands, without a process start per case."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcp.cli.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookstore"


@dataclass(frozen=True)
class Ran:
    status: int
    out: str
    err: str


def meshcp(capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    """`meshcp ARGS...`: its exit status, stdout and stderr."""
    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return Ran(status, captured.out, captured.err)


def bookstore(tmp_path: Path) -> Path:
    """A copy of examples/bookstore to change."""
    copy = tmp_path / "bookstore"
    shutil.copytree(EXAMPLE, copy)
    return copy


def line_of(path: Path, text: str, after: str = "") -> int:
    """The 1-based line of the first line holding `text` (after the first holding `after`)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines) if i >= start and text in line) + 1
