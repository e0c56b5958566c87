"""Reusable parts of the test suite: real Envoy processes, upstreams, resource builders.

Everything here polls with deadlines; nothing synchronises by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

#: How often `eventually` re-checks its predicate.
POLL_INTERVAL = 0.05


async def eventually(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, reported with details
    what: str = "condition",
    details: Callable[[], str] | None = None,
) -> None:
    """Poll `predicate` until it returns True; fail with `what` (and `details()`) after `timeout` s.

    The predicate is retried when it raises `OSError` or `aiohttp.ClientError` (a server
    that is not listening yet, a dropped connection); the last such error is shown if
    the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if await predicate():
                return
            last_error = None
        except (OSError, aiohttp.ClientError) as error:
            last_error = error
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {last_error!r})"
            if details is not None:
                message += "\n" + details()
            raise AssertionError(message)
        await asyncio.sleep(POLL_INTERVAL)


def required_binary(
    name: str, package: str = "", *, install: str = "", path: str | Path | None = None
) -> str:
    """The path of executable `name` (on PATH, or in directory `path`); without it the
    calling test skips with how to install it (Debian `package`, or the command `install`),
    except in CI (`CI` set), where a missing prerequisite fails."""
    found = shutil.which(name, path=path)
    if found is None:
        how = install or f"apt-get install -y {package}"
        reason = f"{name} is not installed ({how})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a child process that must be
    told its port (one that can be given port 0 should be)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def log_tail(directory: tempfile.TemporaryDirectory[str] | None, name: str, size: int = 4000) -> str:
    """The end of a child process's log file `name` in its temporary directory ("" before
    the directory or the file exists): what a failure message shows."""
    if directory is None:
        return ""
    path = Path(directory.name) / name
    return path.read_text(errors="replace")[-size:] if path.exists() else ""
