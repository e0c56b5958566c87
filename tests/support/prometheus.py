"""A real Prometheus (Debian's `prometheus`) on loopback that scrapes exporters the test
controls: Prometheus text served by aiohttp, changed between scrapes. For tests of what
reads Prometheus (queries, the TrafficMetrics API, the dashboard's data) without a lab.

    async with Exporter() as exporter, PrometheusServer([exporter.target]) as prom:
        exporter.text = 'envoy_cluster_upstream_rq_total{...} 5\\n'
        await prom.wait_for_scrapes(exporter, 2)
        samples = await prom.client.query("envoy_cluster_upstream_rq_total")

Every scrape is counted by the exporter, so a test waits for scrapes, never for time.
Without `prometheus` the test skips, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path
from types import TracebackType

from aiohttp import web

from meshcp.kpi.prometheus import Prometheus, PrometheusUnreachable, aiohttp_fetch
from tests.support import eventually, free_port, log_tail, required_binary

#: Scrape interval (s): the shortest Prometheus takes, so tests wait little.
SCRAPE_INTERVAL = 1


def prometheus_binary() -> str:
    """The `prometheus` executable; skip without it, fail in CI."""
    return required_binary("prometheus", "prometheus")


class Exporter:
    """Serves `text` (Prometheus exposition) at /metrics on 127.0.0.1 and counts scrapes."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.scrapes = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(text=self.text, content_type="text/plain")

    async def __aenter__(self) -> Exporter:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class PrometheusServer:
    """One Prometheus process scraping `targets` every second; stopped on exit. With
    `ca_file`, over HTTPS, verifying the targets' certificates against it for
    `server_name` (a webhook's /metrics: the injector serves HTTPS only)."""

    def __init__(self, targets: list[str], *, ca_file: Path | None = None, server_name: str = "") -> None:
        self.targets = targets
        self.ca_file = ca_file
        self.server_name = server_name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = Prometheus(self.url, aiohttp_fetch(self.url))
        #: Made on entry, after the binary was found (a skip leaves nothing to clean up).
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._process: asyncio.subprocess.Process | None = None

    @property
    def log(self) -> str:
        return log_tail(self._directory, "prometheus.log")

    async def __aenter__(self) -> PrometheusServer:
        binary = prometheus_binary()
        self._directory = tempfile.TemporaryDirectory(prefix="meshcp-prometheus-")
        directory = Path(self._directory.name)
        targets = ", ".join(f'"{t}"' for t in self.targets)
        (directory / "prometheus.yml").write_text(
            f"global: {{scrape_interval: {SCRAPE_INTERVAL}s, scrape_timeout: {SCRAPE_INTERVAL}s}}\n"
            f"scrape_configs:\n- job_name: test\n  static_configs: [{{targets: [{targets}]}}]\n" + self._tls()
        )
        with (directory / "prometheus.log").open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            await eventually(self._ready, timeout=30, what="Prometheus ready", details=lambda: self.log)
        except BaseException:
            await self._stop()
            self._directory.cleanup()
            self._directory = None
            raise
        return self

    def _tls(self) -> str:
        if self.ca_file is None:
            return ""
        return (
            "  scheme: https\n"
            f"  tls_config: {{ca_file: '{self.ca_file}', server_name: '{self.server_name}'}}\n"
        )

    async def _ready(self) -> bool:
        assert self._process is not None
        if self._process.returncode is not None:
            raise AssertionError(f"prometheus exited {self._process.returncode}:\n{self.log}")
        try:
            status, _ = await aiohttp_fetch(self.url, timeout=1.0)("/-/ready")
        except PrometheusUnreachable:
            return False
        return status == 200

    async def wait_for_scrapes(self, exporter: Exporter, count: int) -> None:
        """Until the exporter has been scraped `count` more times and Prometheus has
        stored the last of them (its `up` series answers)."""
        wanted = exporter.scrapes + count

        async def scraped() -> bool:
            return exporter.scrapes >= wanted and bool(await self.client.query("up == 1"))

        await eventually(scraped, timeout=10 + 3 * count, what=f"{count} scrapes", details=lambda: self.log)

    async def _stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None
