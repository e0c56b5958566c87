"""`meshcp demo` (filled in below)."""

from __future__ import annotations

from pathlib import Path

from meshcp.lab.layout import LabPaths


def run_demo(source: Path, paths: LabPaths, *, duration: float) -> int:
    raise NotImplementedError
