"""Every module of meshcp sits in a layered contract of `.importlinter`.

`lint-imports` checks the contracts it is given; a module no layered contract names is
checked by none of them, and a new package could quietly import across the pipeline. This
test closes that gap, and checks that the contracts have no import cycle to hide behind.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
GENERATED = "meshcp._proto"


def _layered_modules() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    named: set[str] = set()
    for section in parser.sections():
        if parser.get(section, "type", fallback="") != "layers":
            continue
        containers = parser.get(section, "containers", fallback="").split() or [""]
        for line in parser.get(section, "layers").splitlines():
            for part in line.replace(":", "|").split("|"):
                layer = part.strip().removeprefix("(").removesuffix(")")
                if layer:
                    named.update(f"{c}.{layer}" if c else layer for c in containers)
    return named


def _covered(module: str, named: set[str]) -> bool:
    parts = module.split(".")
    return any(".".join(parts[:n]) in named for n in range(1, len(parts) + 1))


def test_every_module_is_in_a_layered_contract() -> None:
    graph = grimp.build_graph("meshcp")
    named = _layered_modules()
    ours = {m for m in graph.modules if m != "meshcp" and not m.startswith(GENERATED)}
    ours.discard("meshcp.__main__")  # `python -m meshcp`: one line calling the CLI
    # A package counts as covered when its modules are named one by one.
    missing = sorted(
        m for m in ours if not _covered(m, named) and not any(n.startswith(m + ".") for n in named)
    )
    assert missing == [], f"modules in no layered contract of .importlinter: {missing}"


def test_no_import_cycles_between_our_modules() -> None:
    graph = grimp.build_graph("meshcp")
    ours = sorted(m for m in graph.modules if m != "meshcp" and not m.startswith(GENERATED))
    cycles = []
    for module in ours:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(GENERATED) or imported == "meshcp" or imported == module:
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append((module, *back))
    assert cycles == [], f"import cycles: {sorted(set(cycles))[:5]}"
