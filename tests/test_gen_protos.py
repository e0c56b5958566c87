"""`scripts/gen-protos` without the tools it needs: one line saying which, and a non-zero exit.

The script runs from a copy of itself and of `protos/` in a temporary tree, so its archive
cache (`.cache/protos` beside it) starts empty and it must fetch, and `src/meshcp/_proto`
is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "gen-protos", tmp_path / "scripts" / "gen-protos")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path / "scripts" / "gen-protos"


def _run(script: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": str(path)},
    )


def test_without_npm_it_says_so_in_one_line(tmp_path: Path) -> None:
    script = _tree(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    done = _run(script, empty)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "scripts/gen-protos: npm is not installed (apt-get install -y npm); "
        "it is needed to fetch @grpc/grpc-js-xds@1.14.1"
    ]


def test_a_failing_fetch_ends_in_one_line_with_the_tools_reason(tmp_path: Path) -> None:
    script = _tree(tmp_path)
    tools = tmp_path / "bin"
    tools.mkdir()
    npm = tools / "npm"
    npm.write_text("#!/bin/sh\necho 'npm notice' >&2\necho 'npm error code E404' >&2\nexit 1\n")
    npm.chmod(0o755)
    done = _run(script, tools)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "scripts/gen-protos: cannot fetch @grpc/grpc-js-xds@1.14.1: npm failed: npm error code E404"
    ]
