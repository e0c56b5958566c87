"""What a process loads before it does anything: the command line and the controller on
files must not import the Kubernetes client (~0.4 s, every API model class) until a command
talks to a cluster (see meshcp.kube.client)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["meshcp.cli.main", "meshcp.runtime.controller", "meshcp.certs.setup"])
def test_kubernetes_client_is_not_loaded_on_import(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('kubernetes_')))"
    out = _run(probe)
    loaded = out.stdout.strip()
    assert loaded == "[]", f"{module} loads the Kubernetes client: {loaded[:200]}"


def test_kubernetes_client_loads_when_a_client_is_made() -> None:
    probe = (
        "import asyncio, sys, os\n"
        "from meshcp.kube.client import load_configuration\n"
        "os.environ.pop('KUBERNETES_SERVICE_HOST', None)\n"
        "try:\n"
        "    asyncio.run(load_configuration(None, '/nonexistent/kubeconfig'))\n"
        "except Exception as error:\n"
        "    print(type(error).__module__)\n"
        "print('kubernetes_asyncio.client' in sys.modules)\n"
    )
    out = _run(probe)
    assert out.stdout.split()[-1] == "True"


def _run(probe: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", probe]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
