"""`meshcp serve` in a process of its own, on fixed loopback ports (so that proxies find it
again after a restart), that a test can SIGKILL; its log is kept for failure messages."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import eventually, free_port


class ServeProcess:
    """One controller: `start` (again after `kill`), `kill` (SIGKILL), `stop` (SIGTERM)."""

    def __init__(self, source: Path, state_dir: Path, log: Path, *extra: str) -> None:
        self.source = source
        self.state_dir = state_dir
        self.log = log
        self.extra = extra
        self.xds_port, self.http_port, self.debug_port = free_port(), free_port(), free_port()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshcp", "serve",
                "--source", str(self.source), "--state-dir", str(self.state_dir), "--insecure-xds",
                "--xds-address", f"127.0.0.1:{self.xds_port}",
                "--http-address", f"127.0.0.1:{self.http_port}",
                "--debug-address", f"127.0.0.1:{self.debug_port}",
                *self.extra,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    async def wait_ready(self, timeout: float = 60) -> None:  # noqa: ASYNC109 - a polling deadline
        async def ready() -> bool:
            assert self.process is not None and self.process.returncode is None, self.log_tail()
            return (await self.get("/readyz"))[0] == 200

        await eventually(ready, timeout, "meshcp serve to be ready", self.log_tail)

    async def get(self, path: str, *, debug: bool = False) -> tuple[int, Any]:
        port = self.debug_port if debug else self.http_port
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as reply:
            body = await reply.json() if reply.content_type == "application/json" else await reply.text()
            return reply.status, body

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory (VmHWM), in MB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self.process = None

    async def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self.process = None
