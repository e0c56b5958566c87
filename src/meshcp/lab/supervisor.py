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


async def supervise(directory: Path, paths: LabPaths, notify: Callable[[str], None], envoy: Path) -> int:
    """Bring the lab up, tell `lab up`, serve requests until `lab down` or SIGTERM."""
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
    lab: Lab | None = None
    exit_code = 0
    try:
        async with asyncio.TaskGroup() as group:
            lab = Lab(paths, group)
            try:
                await _bring_up(lab, directory, paths=paths, envoy=envoy, group=group, notify=notify)
            except (LabError, OSError) as error:
                notify(f"error: {error}")
                exit_code = 1
                raise _Stop from None
            server = await asyncio.start_unix_server(
                lambda r, w: _answer(lab, r, w, stop), path=str(paths.control)
            )
            notify("ready")
            async with server:
                await stop.wait()
            raise _Stop
    except* _Stop:
        pass
    finally:
        if lab is not None:
            await lab.shutdown()
        await teardown(paths)
    return exit_code


class _Stop(Exception):
    """Ends the supervisor's TaskGroup (cancelling every container keeper)."""


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
    group.create_task(
        processes.keep_running(
            layout.NODE_NETNS,
            lab.controller_container(trust_domain),
            paths.logs / "controller.log",
            lab.controller,
        )
    )
    lab.start_prometheus()
    notify(f"progress: applying {directory}")
    report = await lab.apply(directory)
    for problem in report["problems"]:
        notify(f"problem: {problem}")
    notify(f"progress: {report['pods']} pods started; waiting for every sidecar to ACK its config")
    await lab.wait_ready()
    group.create_task(lab.watch_acks())


async def _answer(
    lab: Lab, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
) -> None:
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
