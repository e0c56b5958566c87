"""Containers as host processes in their pod's network namespace.

A container runs as `ip netns exec <pod> [setpriv --reuid ...] env -i <env> <command>`:
the pod's network (and its /etc/hosts), the container's user, exactly the container's
environment. Each gets its own session, so stopping it also stops what it spawned.
Containers restart when they exit, with kubelet's doubling back-off (restartPolicy
Always); init containers run once, in order, before them.

What keeps a container running is a long-lived part of the lab (`part`): an error it
cannot recover from (its log cannot be opened, `ip` cannot be started) ends the lab with
one line naming it, rather than a container nobody restarts any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from meshcp.lab.network import LabError
from meshcp.lab.pods import Container
from meshcp.telemetry.failures import one_line

log = logging.getLogger("meshcp.lab")

STOP_GRACE = 5.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: A container that ran this long is considered healthy: its back-off starts over.
STEADY = 10.0


class PartFailed(LabError):
    """A long-lived part of the lab stopped with an error it could not recover from: the
    lab stops as a whole (`supervisor.supervise`)."""


async def part(name: str, work: Awaitable[None]) -> None:
    """Run one long-lived part of the lab (`name`: what a user would call it); what it
    raises becomes one line naming it."""
    try:
        await work
    except PartFailed:
        raise
    except Exception as error:
        raise PartFailed(f"{name} stopped: {one_line(error)}") from error


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie: an orphan of a killed supervisor may
    wait a while for its new parent to reap it, and is gone for every purpose of ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")


def command_line(netns: str, container: Container) -> list[str]:
    argv = ["ip", "netns", "exec", netns]
    if container.uid != 0 or container.gid != 0:
        argv += ["setpriv", f"--reuid={container.uid}", f"--regid={container.gid}", "--clear-groups"]
    argv += ["env", "-i", "--", *(f"{key}={value}" for key, value in container.env), *container.argv]
    return argv


async def spawn(netns: str, container: Container, log_path: Path) -> asyncio.subprocess.Process:
    output, cwd = await asyncio.to_thread(_open_log, log_path, container.cwd)
    with output:
        return await asyncio.create_subprocess_exec(
            *command_line(netns, container),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )


def _open_log(log_path: Path, cwd: str) -> tuple[BinaryIO, str]:
    """The container's log (appended to across restarts) and a working directory that exists."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return open(log_path, "ab"), (cwd if os.path.isdir(cwd) else "/")


async def terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the container's session, SIGKILL after the grace period."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def run_once(netns: str, container: Container, log_path: Path) -> int:
    """An init container: run to completion; its exit code."""
    process = await spawn(netns, container, log_path)
    try:
        return await process.wait()
    finally:
        await terminate(process)


@dataclass
class ContainerState:
    """What `lab status` shows of a container."""

    name: str
    running: bool = False
    pid: int = 0
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "running": self.running,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


async def keep_running(netns: str, container: Container, log_path: Path, state: ContainerState) -> None:
    """Run `container` until cancelled, restarting it when it exits."""
    backoff = BACKOFF_FIRST
    while True:
        process = await spawn(netns, container, log_path)
        state.running, state.pid, state.started_at = True, process.pid, time.time()
        state.started.set()
        try:
            code = await process.wait()
        finally:
            await terminate(process)
            state.running = False
        state.last_exit = code
        state.restarts += 1
        ran = time.time() - state.started_at
        backoff = BACKOFF_FIRST if ran >= STEADY else min(backoff * 2, BACKOFF_MAX)
        log.warning(
            "container %s in %s exited with %s; restarting in %.0f s", container.name, netns, code, backoff
        )
        await asyncio.sleep(backoff)
