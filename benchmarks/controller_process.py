"""`meshcp serve` in its own process, as the mesh benchmarks run it, and what they read of it:
CPU and memory from /proc, /readyz and /metrics over HTTP. `meshcp_source` picks the meshcp
it runs: the working tree, or a commit (`git archive REV src`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import processes


class Controller:
    """`meshcp serve --source MESH --insecure-xds` on loopback ports, logging to `log`."""

    def __init__(self, mesh: Path, state: Path, log: Path, extra: list[str]) -> None:
        self.xds_port, self.http_port = processes.free_port(), processes.free_port()
        self.state = state
        command = [
            sys.executable,
            "-m",
            "meshcp",
            "--log-level",
            "warning",
            "serve",
            "--source",
            str(mesh),
            "--insecure-xds",
            "--xds-address",
            f"127.0.0.1:{self.xds_port}",
            "--http-address",
            f"127.0.0.1:{self.http_port}",
            "--debug-address",
            "127.0.0.1:0",
            "--state-dir",
            str(state),
            *extra,
        ]
        self._log = log.open("wb")
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"controller exited with {self.process.returncode}; see {self._log.name}")

    def wait_for_xds(self, timeout: float) -> None:
        failure = f"xDS port {self.xds_port} not open after {timeout:.0f} s"
        processes.wait_for_port(self.xds_port, self.check, timeout, 0.02, failure)

    def cpu(self) -> float:
        return processes.cpu_seconds(self.pid)

    def status_mb(self, key: str) -> float:
        return processes.status_mb(self.pid, key)

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), b""
        except (urllib.error.URLError, OSError):
            return 0, b""

    def metrics(self) -> dict[str, float]:
        status, body = self.get("/metrics", timeout=60)
        return parse_metrics(body.decode()) if status == 200 else {}

    def stop(self) -> None:
        processes.stop(self.process, timeout=30)
        self._log.close()


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$")


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match and not match[1].endswith("_created"):
            out[match[1] + (match[2] or "")] = float(match[3])
    return out


def metric_delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in after.items():
        if key.startswith(prefix):
            delta = value - before.get(key, 0.0)
            if delta:
                label = key[len(prefix) :].strip("{}").replace('type="', "").rstrip('"') or "total"
                out[label] = delta
    return out


@contextlib.contextmanager
def meshcp_source(rev: str) -> Iterator[None]:
    """With a REV: `git archive REV src` into a temporary directory, first on PYTHONPATH for
    every child, removed at the end. Without: the working tree's meshcp."""
    if not rev:
        yield
        return
    target = _export(rev)
    try:
        yield
    finally:
        shutil.rmtree(target, ignore_errors=True)


@contextlib.contextmanager
def exported(rev: str) -> Iterator[Path]:
    """`git archive REV src` in a temporary directory (its `src` to put on PYTHONPATH with
    `use_source`), removed at the end; PYTHONPATH is left as it was."""
    before = os.environ.get("PYTHONPATH")
    target = _export(rev)
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before
    try:
        yield target / "src"
    finally:
        shutil.rmtree(target, ignore_errors=True)


def use_source(src: Path, base: str | None) -> None:
    """Children spawned from now on import meshcp from `src` (PYTHONPATH `src` + `base`)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), base]))


def _export(rev: str) -> Path:
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix=f"meshcp-src-{commit}-"))
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", commit, "src"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(target / "src"), os.environ.get("PYTHONPATH")])
    )
    print(f"# meshcp from {rev} = {commit}", file=sys.stderr)
    return target
