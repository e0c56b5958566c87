"""The lab's background process: it owns the namespaces, the controller and every container.

`lab up` starts it detached and waits for one line on its stdout ("ready", or "error: ..."
followed by the reason); after that it answers `lab apply/status/down` on a Unix socket,
one JSON request and one JSON answer per connection. Everything it runs lives in a
TaskGroup, so that a failure anywhere stops the lab as a whole instead of leaving half of
it running. What the lab does with what it runs is `cluster.Lab`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshcp.certs.setup import CaSettings, close_provider, open_provider
from meshcp.lab import layout, network, processes
from meshcp.lab.cluster import Lab
from meshcp.lab.layout import LabPaths
from meshcp.lab.manifests import read_directory
from meshcp.lab.network import LabError
from meshcp.lab.plan import mesh_config
from meshcp.telemetry.failures import one_line

log = logging.getLogger("meshcp.lab")


async def supervise(directory: Path, paths: LabPaths, notify: Callable[[str], None], envoy: Path) -> int:
    """Bring the lab up, tell `lab up`, serve requests until `lab down` or SIGTERM.

    A part that fails (a container's keeper, the ACK watcher, a request that broke
    halfway) stops the lab whole: everything it ran is removed, the reason is one line
    (told to `lab up` while it waits, kept in `LabPaths.failure` for the next command),
    and the exit status is 1."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o755)
    for sub in (paths.logs, paths.pods, paths.bin, paths.controller_state):
        sub.mkdir(parents=True, exist_ok=True)
    paths.pods.chmod(0o755)
    paths.supervisor_pid.write_text(str(os.getpid()))
    with contextlib.suppress(FileNotFoundError):
        paths.failure.unlink()
    lab: Lab | None = None
    failures: list[str] = []
    try:
        async with asyncio.TaskGroup() as group:
            lab = Lab(paths, group)
            await _bring_up(lab, directory, paths=paths, envoy=envoy, group=group, notify=notify)
            server = await asyncio.start_unix_server(
                lambda r, w: _answer(lab, r, w, stop, failures), path=str(paths.control)
            )
            notify("ready")
            async with server:
                await stop.wait()
            raise _Stop
    except* _Stop:
        pass
    except* Exception as failed:
        failures.insert(0, _reason(failed))
    finally:
        if failures:
            log.error("%s", failures[0])
        failures += await _remove(lab, paths)
    if not failures:
        return 0
    with contextlib.suppress(OSError):
        paths.failure.write_text(failures[0] + "\n")
    notify(f"error: {failures[0]}")
    return 1


class _Stop(Exception):
    """Ends the supervisor's TaskGroup (cancelling every container keeper)."""


def _reason(failed: BaseExceptionGroup[Exception]) -> str:
    """The first failure, in one line: a `LabError` says what failed already (a
    `PartFailed` names its part); anything else was not expected anywhere."""
    first: BaseException = failed
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if isinstance(first, LabError | OSError):
        return one_line(first)
    return f"the lab's supervisor stopped: {one_line(first)}"


async def _remove(lab: Lab | None, paths: LabPaths) -> list[str]:
    """Stop the pods and remove everything the lab made; what could not be removed, in one
    line (`lab down` tries again)."""
    try:
        if lab is not None:
            await lab.shutdown()
        await teardown(paths)
    except Exception as error:
        reason = f"the lab could not be removed whole: {one_line(error)} (run meshcp lab down)"
        log.error("%s", reason)
        return [reason]
    return []


async def _bring_up(
    lab: Lab,
    directory: Path,
    *,
    paths: LabPaths,
    envoy: Path,
    group: asyncio.TaskGroup,
    notify: Callable[[str], None],
) -> None:
    notify("progress: creating the node network")
    await network.create_node()
    shutil.copy2(envoy, paths.bin / "envoy")
    (paths.bin / "envoy").chmod(0o755)
    manifests, _ = read_directory(directory)
    trust_domain = mesh_config(manifests).trust_domain
    provider = await open_provider(CaSettings(state_dir=paths.controller_state, trust_domain=trust_domain))
    await close_provider(provider)
    paths.source.mkdir(parents=True, exist_ok=True)
    notify("progress: starting meshcp serve")
    controller, log_path = lab.controller_container(trust_domain), paths.logs / "controller.log"
    keeper = processes.keep_running(layout.NODE_NETNS, controller, log_path, lab.controller)
    group.create_task(processes.part("the keeper of the controller", keeper))
    lab.start_prometheus()
    notify(f"progress: applying {directory}")
    report = await lab.apply(directory)
    for problem in report["problems"]:
        notify(f"problem: {problem}")
    notify(f"progress: {report['pods']} pods started; waiting for every sidecar to ACK its config")
    await lab.wait_ready()
    group.create_task(processes.part("the ACK watcher", lab.watch_acks()))


async def _answer(
    lab: Lab,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stop: asyncio.Event,
    failures: list[str],
) -> None:
    op = None
    try:
        request = json.loads(await reader.readline())
        op = request.get("op")
        if op == "status":
            answer: dict[str, Any] = {"ok": True, **await lab.status()}
        elif op == "apply":
            report = await lab.apply(Path(request["directory"]))
            if request.get("wait", True):
                await lab.wait_ready()
            answer = {"ok": True, **report}
        elif op == "down":
            answer = {"ok": True}
            stop.set()
        else:
            answer = {"ok": False, "error": f"unknown request {op!r}"}
    except (LabError, ValueError, KeyError) as error:
        answer = {"ok": False, "error": str(error)}
    except Exception as error:
        # A request that broke halfway may have left the lab half applied: stop it whole.
        reason = f"the lab's {op or 'request'} request failed: {one_line(error)}"
        log.error("%s", reason)
        failures.append(reason)
        stop.set()
        answer = {"ok": False, "error": f"{reason}; the lab is stopping"}
    writer.write(json.dumps(answer).encode() + b"\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def teardown(paths: LabPaths) -> list[str]:
    """Remove everything a lab made, running or crashed: processes in its namespaces, the
    namespaces, /etc/netns entries, the supervisor and the lab directory. Idempotent."""
    removed: list[str] = []
    for netns in await network.lab_namespaces():
        for pid in await network.pids_in(netns):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await network.delete_netns(netns)
        removed.append(netns)
    network.remove_hosts()
    if paths.root.exists():
        shutil.rmtree(paths.root, ignore_errors=True)
        removed.append(str(paths.root))
    return removed
