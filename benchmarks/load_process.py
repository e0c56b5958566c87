"""A load process of simulated proxies: its life under the orchestrator's commands, the
progress of its proxies, and opening their connections.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from control_pipe import CommandLoop
from h2_client import H2Connection, P


@dataclass
class Tracker:
    """Progress of every proxy of one load process."""

    pending: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: list[str] = field(default_factory=list)
    armed: bool = False

    def on_ready(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.ready.set()

    def on_failed(self, message: str) -> None:
        self.failed.append(message)
        self.on_ready()


class ControlledLoad(CommandLoop):
    """A load process's life: it says hello, serves the parent's commands (`handlers`),
    and on "stop" closes every connection and reports the CPU it used."""

    def __init__(self, control: Connection) -> None:
        super().__init__(control)
        self._connections: list[H2Connection[Any]] = []

    async def main(self) -> None:
        self.listen()
        self._control.send({"hello": True})
        await self._stop.wait()
        asyncio.get_running_loop().remove_reader(self._control.fileno())
        for connection in self._connections:
            connection.close()
        for connection in self._connections:
            await connection.closed.wait()
        self._control.send({"stopped": True, "cpu": time.process_time()})

    async def open_connections(
        self,
        proxies: list[P],
        per: int,
        host: str,
        port: int,
        connection: Callable[[list[P]], H2Connection[P]],
    ) -> None:
        """One connection per `per` proxies, then, once the server's SETTINGS arrived on
        each, every proxy's stream with its first request."""
        loop = asyncio.get_running_loop()
        for offset in range(0, len(proxies), per):
            group = proxies[offset : offset + per]
            _, opened = await loop.create_connection(functools.partial(connection, group), host, port)
            self._connections.append(opened)
        for opened in self._connections:
            await opened.settings_seen.wait()
            if opened.error:
                raise RuntimeError(opened.error)
            opened.open_streams()
