"""The real `helm` CLI for the chart's tests, as scripts/build-helm builds it, and the chart's
render (`helm template`) as parsed documents.

Without the binary the calling test skips, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import required_binary

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "meshcp"
BUILD_HELM = ROOT / "scripts" / "build-helm"
RELEASE = "meshcp"
NAMESPACE = "meshcp-system"


def helm_version() -> str:
    """The version scripts/build-helm builds (its `version=` line)."""
    for line in BUILD_HELM.read_text().splitlines():
        if line.startswith("version="):
            return line.removeprefix("version=")
    raise AssertionError(f"{BUILD_HELM} names no version")


def helm_binary() -> str:
    """`$MESHCP_HELM`, else `${MESHCP_HELM_CACHE:-~/.cache/meshcp-helm}/<version>/bin/helm`."""
    explicit = os.environ.get("MESHCP_HELM")
    if explicit:
        return required_binary(Path(explicit).name, install="scripts/build-helm", path=Path(explicit).parent)
    cache = os.environ.get("MESHCP_HELM_CACHE") or str(Path.home() / ".cache" / "meshcp-helm")
    return required_binary("helm", install="scripts/build-helm", path=Path(cache) / helm_version() / "bin")


def helm(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm; a failure with `check` raises with its stderr."""
    result = subprocess.run(
        [helm_binary(), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def template(*sets: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """`helm template -n namespace` of the chart (CRDs included) with `--set` for each of
    `sets`, parsed."""
    options = [option for value in sets for option in ("--set", value)]
    rendered = helm("template", RELEASE, str(CHART), "--namespace", namespace, "--include-crds", *options)
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]
