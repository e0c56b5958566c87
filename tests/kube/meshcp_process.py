"""`python -m meshcp ...` as a child process for the tests against the real API server: its
output in a log file, ready once an HTTP(S) URL answers 200, stopped with SIGTERM (SIGKILL
after a deadline) on exit."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import aiohttp

from tests.support import eventually, free_port, log_tail

#: How long a meshcp process gets to become ready (a cold start imports a lot).
READY_TIMEOUT = 60.0
#: Where the controller keeps its CA and the injector reads it: deploy/'s --ca-secret.
CA_SECRET = "meshcp-system/meshcp-ca"


class MeshcpProcess:
    """`meshcp ARGS`, ready when `ready_url` answers 200 (verified against `ca_file` for
    HTTPS)."""

    def __init__(self, *args: str, ready_url: str, ca_file: Path | None = None) -> None:
        self.args = args
        self.ready_url = ready_url
        self.ca_file = ca_file
        #: The xDS, HTTP and debug ports, for a controller.
        self.xds_port = 0
        self.http_port = 0
        self.debug_port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: asyncio.subprocess.Process | None = None
        #: The log as it was when the process stopped (kept after the directory is gone).
        self.final_log = ""

    @property
    def log(self) -> str:
        return self.final_log or log_tail(self._tmp, "meshcp.log", size=20_000)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def __aenter__(self) -> MeshcpProcess:
        self._tmp = tempfile.TemporaryDirectory(prefix="meshcp-process-")
        with (Path(self._tmp.name) / "meshcp.log").open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meshcp",
                *self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def wait_ready(self) -> None:
        context: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
        )

        async def ready() -> bool:
            if not self.running:
                raise AssertionError(f"meshcp {self.args[0]} exited:\n{self.log}")
            timeout = aiohttp.ClientTimeout(total=2)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(self.ready_url, ssl=context) as reply,
            ):
                return reply.status == 200

        await eventually(
            ready, timeout=READY_TIMEOUT, what=f"meshcp {self.args[0]} ready", details=lambda: self.log
        )

    async def kill(self) -> None:
        """SIGKILL: no shutdown of any kind (a crashed pod, a node gone); the log is kept."""
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._tmp is not None:
            self.final_log = log_tail(self._tmp, "meshcp.log", size=20_000)
            self._tmp.cleanup()
            self._tmp = None

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@asynccontextmanager
async def controller(kubeconfig: Path, state: Path, *extra: str) -> AsyncIterator[MeshcpProcess]:
    """`meshcp serve --source kubernetes` with `kubeconfig`, its CA in deploy/'s Secret
    (created on its first start), plaintext xDS on a free port (a test's Envoy needs no
    certificate), and `extra` arguments; ready once it has listed every kind."""
    xds, http, debug = free_port(), free_port(), free_port()
    process = MeshcpProcess(
        "serve",
        "--source=kubernetes",
        f"--kubeconfig={kubeconfig}",
        "--insecure-xds",
        f"--xds-address=127.0.0.1:{xds}",
        f"--http-address=127.0.0.1:{http}",
        f"--debug-address=127.0.0.1:{debug}",
        f"--ca-secret={CA_SECRET}",
        f"--state-dir={state}",
        *extra,
        ready_url=f"http://127.0.0.1:{http}/readyz",
    )
    process.xds_port = xds
    process.http_port = http
    process.debug_port = debug
    async with process:
        yield process
