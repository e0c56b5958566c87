"""sovereign (PyPI) serving the clusters meshcp compiled for one pod, in its own process.

Its `clusters` template is a Python template returning that list (the cheapest template
sovereign has), read from `clusters.json` beside it. It runs with `workers` gunicorn worker
processes and its access log off (meshcp logs no requests); its CPU and memory are those of
the master and its workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import processes

TEMPLATE = '''"""sovereign template: the clusters meshcp compiled for one pod (clusters.json)."""
import json
import pathlib

CLUSTERS = json.loads((pathlib.Path(__file__).parent / "clusters.json").read_text())


def call(**kwargs):
    return CLUSTERS
'''


def write_config(workdir: Path, clusters: list[dict[str, Any]]) -> None:
    """sovereign.yaml, its template and the clusters, in `workdir`."""
    (workdir / "clusters.json").write_text(json.dumps(clusters))
    (workdir / "clusters.py").write_text(TEMPLATE)
    spec = {"protocol": "python", "serialization": "raw", "path": str(workdir / "clusters.py")}
    (workdir / "sovereign.yaml").write_text(
        json.dumps({"templates": {"default": [{"type": "clusters", "spec": spec}]}})
    )


class Sovereign:
    def __init__(self, executable: str, workdir: Path, workers: int) -> None:
        self.port = processes.free_port()
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(
            SOVEREIGN_CONFIG=f"file://{workdir / 'sovereign.yaml'}",
            SOVEREIGN_HOST="127.0.0.1",
            SOVEREIGN_PORT=str(self.port),
            SOVEREIGN_WORKERS=str(workers),
            SOVEREIGN_ENABLE_ACCESS_LOGS="false",
        )
        self._log = (workdir / "sovereign.log").open("wb")
        self.process = subprocess.Popen(
            [executable], env=env, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT
        )

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"sovereign exited with {self.process.returncode}; see {self._log.name}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        processes.wait_for_port(self.port, self.check, timeout, 0.1, "sovereign did not open its port")

    def cpu(self) -> float:
        total = 0.0
        for pid in processes.with_children(self.process.pid):
            with contextlib.suppress(OSError):
                total += processes.cpu_seconds(pid)
        return total

    def rss_mb(self) -> float:
        total = 0.0
        for pid in processes.with_children(self.process.pid):
            with contextlib.suppress(OSError):
                total += processes.status_mb(pid, "VmRSS")
        return total

    def stop(self) -> None:
        processes.stop(self.process, timeout=30)
        self._log.close()
