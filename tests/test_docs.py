"""The repository explains itself, and its explanation matches the tree.

Design notes go stale when code moves: these checks fail when the README's package table
misses a package, or when the README, CONTRIBUTING.md or a page of docs/ names a module or
a file that does not exist.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "meshcp"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

#: `meshcp.a.b` in backticks (not the `meshcp.dev/...` label and annotation prefix).
_DOTTED = re.compile(r"`(meshcp(?:\.\w+)+)(?![\w/.-])")
#: `runtime.store`, `xds.stream.Shared`: a package of meshcp named without the prefix.
_SHORT = re.compile(
    r"`((?:cli|lab|injector|runtime|http|sources|xds|compile|sidecar|policy|cache|model|certs|kube"
    r"|telemetry)(?:\.\w+)+)(?:\(\))?`"
)
#: `test_something`: a test a page cites as the proof of a rule.
_TEST = re.compile(r"`(test_\w+)`")
#: `some/path.py` in backticks.
_PY_FILE = re.compile(r"`([\w./-]+\.py)`")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def _file_exists(path: str) -> bool:
    bases = [ROOT, PACKAGE, ROOT / "tests", ROOT / "benchmarks", *PACKAGE.iterdir()]
    return any((base / path).is_file() for base in bases if base.is_dir())


def _test_names() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        found.update(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_module_and_file_a_page_names_exists(page: Path) -> None:
    text = page.read_text()
    named = {*_DOTTED.findall(text), *(f"meshcp.{m}" for m in _SHORT.findall(text))}
    missing = sorted(m for m in named if not _resolves(m))
    missing += sorted({f for f in _PY_FILE.findall(text) if not _file_exists(f)})
    missing += sorted(set(_TEST.findall(text)) - _test_names())
    assert missing == [], f"{page.name} names what is not in the tree: {missing}"


def test_the_readme_table_lists_every_package() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Architecture") : readme.index("## CLI")]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__"))
    missing = [name for name in packages + modules if f"`meshcp.{name}`" not in table]
    assert missing == [], f"README's architecture table misses: {missing}"
