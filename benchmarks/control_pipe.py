"""How an orchestrator drives the processes it spawns: one pipe each, commands one way and
answers (dicts) the other, so that nothing waits by sleeping.

`Child` is the orchestrator's end: it spawns `target(pipe, spec)` (multiprocessing spawn,
which imports the target's module again by its bare name), sends commands, waits for an
answer with a timeout and stops the process. `run_child` and `CommandLoop` are the child's
end: an event loop in which each command runs its handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any


class Child:
    """A spawned process and our end of its control pipe; `timeout` is how long `recv`
    waits for an answer unless told otherwise."""

    def __init__(self, name: str, target: Callable[..., None], spec: Any, timeout: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.timeout = timeout
        self.pipe, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(target=target, args=(child_end, spec), name=name)
        self.process.start()
        child_end.close()

    def send(self, *command: Any) -> None:
        self.pipe.send(command)

    def ask(self, *command: Any, timeout: float | None = None) -> dict[str, Any]:
        self.send(*command)
        return self.recv(timeout)

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        timeout = self.timeout if timeout is None else timeout
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
        try:
            reply: dict[str, Any] = self.pipe.recv()
        except EOFError:
            raise RuntimeError(f"{self.name} exited (code {self.process.exitcode})") from None
        return reply

    def stop(self) -> None:
        """Ask it to stop; terminate it, then kill it, if it does not exit."""
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            self.send("stop")
            self.recv(timeout=30)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.pipe.close()


def run_child(main: Callable[[], Awaitable[None]]) -> None:
    """A spawned process's entry point: raise its file limit (it holds many sockets), then
    run `main()` in a new event loop. `main` builds its objects inside the running loop:
    grpclib binds its server to the loop current at construction."""
    raise_file_limit()
    asyncio.run(_call(main))


async def _call(main: Callable[[], Awaitable[None]]) -> None:
    await main()


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class CommandLoop:
    """The child's end of the pipe, once `listen` is called: each command names a handler
    of `handlers()` (a coroutine handler runs as a task); "stop" sets `_stop`."""

    def __init__(self, control: Connection) -> None:
        self._control = control
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        raise NotImplementedError

    def listen(self) -> None:
        asyncio.get_running_loop().add_reader(self._control.fileno(), self._on_command)

    def _on_command(self) -> None:
        command, *args = self._control.recv()
        result = {**self.handlers(), "stop": self._stop.set}[command](*args)
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
