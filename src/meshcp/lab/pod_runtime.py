"""One running pod: its network namespace, its init containers run in order, its containers
kept running, and its readiness probes checked, as the kubelet would."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshcp.lab import network, processes
from meshcp.lab.layout import LabPaths
from meshcp.lab.netns_http import connect_in, get
from meshcp.lab.network import LabError
from meshcp.lab.pods import Container, PlannedPod

log = logging.getLogger("meshcp.lab")

#: Seconds a pod's readiness probes may take to pass once its containers started.
PORTS_TIMEOUT = 30.0
#: Seconds between two tries of a readiness probe.
PROBE_INTERVAL = 0.05


class PodRuntime:
    """One pod's namespace and processes."""

    def __init__(self, planned: PlannedPod, paths: LabPaths) -> None:
        self.planned = planned
        self.paths = paths
        self.phase = "Pending"
        self.states = {c.name: processes.ContainerState(c.name) for c in planned.containers}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(
        self,
        group: asyncio.TaskGroup,
        volume: Callable[[PlannedPod], Awaitable[None]] | None,
        service_rules: str,
    ) -> None:
        pod = self.planned
        await network.create_pod(pod.netns, pod.ip, pod.interface)
        if pod.sidecar is not None or pod.proxyless is not None:
            assert volume is not None
            await volume(pod)
        if pod.sidecar is None:  # no sidecar for Services' addresses: kube-proxy's rules
            await network.restore_nat(pod.netns, service_rules, flush=True)
        self.phase = "Init"
        for container in pod.init:
            code = await processes.run_once(pod.netns, container, self._log(container))
            if code != 0:
                self.phase = "Init:Error"
                raise LabError(
                    f"pod {pod.key}: init container {container.name} exited with {code} "
                    f"(see meshcp lab logs {pod.key} -c {container.name})"
                )
        for container in pod.containers:
            state = self.states[container.name]
            keeper = processes.keep_running(pod.netns, container, self._log(container), state)
            name = f"the keeper of container {container.name} of pod {pod.key}"
            self._tasks.append(group.create_task(processes.part(name, keeper)))
        for state in self.states.values():
            await state.started.wait()
        self.phase = "Starting"
        if await _listening(pod):
            self.phase = "Running"
        else:
            self.phase = "NotReady"
            log.warning("pod %s: its readiness probes did not pass within %.0f s", pod.key, PORTS_TIMEOUT)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # What a keeper raised is its TaskGroup's to report (it stops the lab): here it is
        # only waited for.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await network.delete_netns(self.planned.netns)
        shutil.rmtree(self.paths.pod_dir(self.planned.namespace, self.planned.name), ignore_errors=True)
        self.phase = "Terminated"

    def _log(self, container: Container) -> Path:
        return self.paths.log(self.planned.namespace, self.planned.name, container.name)

    def status(self) -> dict[str, Any]:
        pod = self.planned
        return {
            "namespace": pod.namespace,
            "name": pod.name,
            "ip": pod.ip,
            "phase": self.phase,
            "meshed": pod.sidecar is not None,
            "node_id": pod.node_id,
            "containers": [state.as_json() for state in self.states.values()],
        }


async def _listening(pod: PlannedPod) -> bool:
    """Whether the pod's readiness probes (tcpSocket, httpGet) pass within a while; a pod
    without probes is ready once its containers started, as in Kubernetes. The probes run
    against 127.0.0.1 in the pod, which the sidecar never intercepts."""
    deadline = time.monotonic() + PORTS_TIMEOUT
    for kind, port, path in pod.readiness:
        while not await _probe(pod.netns, kind, port, path):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(PROBE_INTERVAL)
    return True


async def _probe(netns: str, kind: str, port: int, path: str) -> bool:
    if kind == "http":
        try:
            status, _ = await get(netns, port, path)
        except LabError:
            return False
        return 200 <= status < 400
    try:
        sock = await asyncio.to_thread(connect_in, netns, "127.0.0.1", port, 1.0)
    except OSError:
        return False
    sock.close()
    return True
