"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for
tests of web pages: load a URL, wait until the page says it is ready, read the DOM,
click, take a screenshot.

    async with Chromium() as browser:
        page = await browser.open("http://127.0.0.1:9091/dashboard")
        await page.wait_for("document.body.dataset.state === 'ok'")
        names = await page.evaluate("[...document.querySelectorAll('[data-node]')].map(n => n.id)")
        await page.screenshot(artifact("dashboard.png"))

The protocol runs over a pipe (`--remote-debugging-pipe`: requests on the browser's fd 3,
answers on its fd 4), not a port: nothing listens, and the browser can run inside a
network namespace (`prefix=("ip", "netns", "exec", NAME)`) while the test stays outside.
Every browser gets a fresh profile directory and runs in a session of its own, which is
killed as a whole on exit, renderer and GPU processes included. Every command has a
deadline. Without `chromium` the test skips, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import log_tail, required_binary

#: Seconds any one DevTools command may take.
COMMAND_TIMEOUT = 30.0
WINDOW = (1280, 900)
#: Headless Chromium as root in a container, and nothing reaching out to the network by
#: itself (see /work/shared/DEPENDENCY-FACTS.md, "Prometheus, Chromium, Helm").
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--remote-debugging-pipe",
)
#: Runs argv[3:] with the fds argv[1] (requests) and argv[2] (answers) as its fds 3 and 4
#: (moved out of the way first, in case one of them is 3 or 4).
_ON_FDS = """\
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for fd in sys.argv[1:3]:
    os.close(int(fd))
for target, fd in zip((3, 4), ends):
    os.dup2(fd, target)
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


def chromium_binary() -> str:
    """The `chromium` executable; skip without it, fail in CI."""
    return required_binary("chromium", "chromium")


def artifact(name: str) -> Path:
    """Where a test saves a file for people to look at: `$MESHCP_TEST_ARTIFACTS/<name>`
    (default /tmp/meshcp-test-artifacts)."""
    directory = Path(os.environ.get("MESHCP_TEST_ARTIFACTS", "/tmp/meshcp-test-artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


class BrowserError(AssertionError):
    """The browser failed a command, exited, or a page script threw."""


class Chromium:
    """One headless browser process; `prefix` is prepended to its command line (e.g. to
    run it in a network namespace)."""

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix = tuple(prefix)
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        #: Uncaught exceptions and console errors of every page, as text.
        self.page_errors: list[str] = []
        #: Every URL a page requested (the pages, their files, their fetches).
        self.requests: list[str] = []

    @property
    def log(self) -> str:
        return log_tail(self._directory, "chromium.log")

    async def __aenter__(self) -> Chromium:
        binary = chromium_binary()
        # Made only now: a skipped test leaves no directory behind.
        self._directory = tempfile.TemporaryDirectory(prefix="meshcp-chromium-")
        directory = Path(self._directory.name)
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        argv = [*self.prefix, sys.executable, "-c", _ON_FDS, str(requests_read), str(answers_write)]
        argv += [binary, *FLAGS, f"--user-data-dir={directory / 'profile'}"]
        try:
            with (directory / "chromium.log").open("wb") as log:
                self._process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(requests_read, answers_write),
                    start_new_session=True,
                )
        finally:
            os.close(requests_read)
            os.close(answers_write)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=256 * 1024 * 1024)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(answers_read, "rb", buffering=0)
        )
        self._writer, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(requests_write, "wb", buffering=0)
        )
        self._reader_task = asyncio.create_task(self._read(reader))
        try:
            await self.send("Browser.getVersion")
        except BaseException:
            await self._stop()
            self._directory.cleanup()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        if self._directory is not None:
            self._directory.cleanup()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Dispatch the browser's messages: answers to their command, events kept when
        they report a page error; on the pipe's end, every waiting command fails."""
        try:
            while True:
                message = json.loads((await reader.readuntil(b"\0"))[:-1])
                future = self._pending.pop(message.get("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(message)
                elif "method" in message:
                    self._event(message["method"], message.get("params", {}))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BrowserError(f"chromium closed its pipe:\n{self.log}"))
            self._pending.clear()

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.page_errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = params.get("args", [])
            self.page_errors.append("console.error: " + " ".join(str(a.get("value", "")) for a in args))

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """One DevTools command (`method` with `params`, in the page `session` if given):
        its result; BrowserError when the browser refuses it or does not answer in time."""
        if self._writer is None or self._writer.is_closing():
            raise BrowserError(f"chromium is not running:\n{self.log}")
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        self._writer.write(json.dumps(message).encode() + b"\0")
        try:
            answer = await asyncio.wait_for(future, COMMAND_TIMEOUT)
        except TimeoutError:
            self._pending.pop(message["id"], None)
            raise BrowserError(f"chromium did not answer {method} within {COMMAND_TIMEOUT:g} s") from None
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message', answer['error'])}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def open(self, url: str) -> Page:
        """A new tab of the browser's window size showing `url` (loaded, scripts may still run)."""
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = Page(self, attached["sessionId"])
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Network.enable")
        width, height = WINDOW
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await page.goto(url)
        return page

    async def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None and self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(BrowserError, ConnectionError):
                self._writer.write(json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
        # The whole session: renderer, GPU and zygote processes outlive a killed browser.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reader_task, 10)


class Page:
    """A tab: navigate, evaluate JavaScript, wait for a condition, screenshot."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, self.session, **params)

    async def goto(self, url: str) -> None:
        navigated = await self.send("Page.navigate", url=url)
        if navigated.get("errorText"):
            raise BrowserError(f"cannot load {url}: {navigated['errorText']}")
        await self.wait_for("document.readyState === 'complete'", what=f"{url} loaded")

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (awaited if it is a promise)."""
        answer = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            raise BrowserError(f"{expression!r:.200} threw: {text}")
        return answer.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, what: str = "") -> None:  # noqa: ASYNC109 - a polling deadline
        """Poll a JavaScript condition until it is true; fail naming `what` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not await self.evaluate(f"Boolean({expression})"):
            if time.monotonic() >= deadline:
                state = await self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
                raise BrowserError(
                    f"timed out after {timeout:g} s waiting for {what or expression}; page:\n{state}"
                )
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        """The whole page (beyond the window's height) as a PNG at `path`."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": WINDOW[0], "height": max(WINDOW[1], size["height"]), "scale": 1}
        shot = await self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        return path
