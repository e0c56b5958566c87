"""Golden files: the compiled config of every meshed pod of examples/bookstore.

Reviewed once, compared on every run. Regenerate after an intended change with
`MESHCP_UPDATE_GOLDEN=1 pytest tests/golden` and review the diff like code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from meshcp.cli import offline
from meshcp.model.state import MeshState
from meshcp.policy.build import build_policies

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookstore"
GOLDEN = Path(__file__).parent / "bookstore"
UPDATE = os.environ.get("MESHCP_UPDATE_GOLDEN") == "1"


@pytest.fixture
async def state() -> MeshState:
    return await offline.load(EXAMPLE)


def golden_name(namespace: str, pod: str) -> str:
    return f"{namespace}__{pod}.json"


async def test_every_meshed_pod_matches_its_golden_file(state: MeshState) -> None:
    pods = sorted(build_policies(state).pod_classes)
    assert pods, "the example has no meshed pods"
    seen = set()
    for namespace, pod in pods:
        compiled = offline.compile_pod(state, namespace, pod)
        document = {"class": compiled.class_key, "identity": str(compiled.identity), **compiled.config}
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        path = GOLDEN / golden_name(namespace, pod)
        seen.add(path.name)
        if UPDATE:
            path.write_text(text)
            continue
        assert path.exists(), f"no golden file {path.name}; run with MESHCP_UPDATE_GOLDEN=1 and review it"
        assert text == path.read_text(), f"{path.name} differs; if intended, regenerate and review the diff"
    # Every golden file is used: a stale one (a pod that left the example) fails.
    assert {p.name for p in GOLDEN.glob("*.json")} == seen
