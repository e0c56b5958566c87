"""The lab's background process: it owns the namespaces, the controller and every container.

`lab up` starts it detached and waits for one line on its stdout ("ready", or "error: ..."
followed by the reason); after that it answers `lab apply/status/down` on a Unix socket,
one JSON request and one JSON answer per connection. Everything it runs lives in a
TaskGroup, so that a failure anywhere stops the lab as a whole instead of leaving half of
it running.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from meshcp.certs.issuance import xds_client_request
from meshcp.certs.issuer import Issuer
from meshcp.certs.setup import CaSettings, close_provider, open_provider
from meshcp.injector import mutation
from meshcp.lab import layout, network, processes
from meshcp.lab.layout import LabPaths
from meshcp.lab.manifests import Manifest, ManifestError, expand_deployments, read_directory
from meshcp.lab.netns_http import connect_in, get, get_json
from meshcp.lab.network import LabError
from meshcp.lab.plan import (
    PROXY_USER,
    Allocation,
    Container,
    LabPlan,
    PlanContext,
    PlannedPod,
    mesh_config,
    plan,
)

log = logging.getLogger("meshcp.lab")

READY_TIMEOUT = 120.0
POLL = 0.2
PORTS_TIMEOUT = 30.0
PROXY_TYPES = ("cds", "eds", "lds", "rds", "sds")


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
        if pod.sidecar is not None:
            assert volume is not None
            await volume(pod)
        else:
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
            self._tasks.append(
                group.create_task(processes.keep_running(pod.netns, container, self._log(container), state))
            )
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
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
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


class Lab:
    def __init__(self, paths: LabPaths, group: asyncio.TaskGroup) -> None:
        self.paths = paths
        self.group = group
        self.allocation = Allocation()
        self.plan: LabPlan | None = None
        self.pods: dict[str, PodRuntime] = {}
        self.directory: Path | None = None
        self.lock = asyncio.Lock()
        self.controller = processes.ContainerState("meshcp-serve")
        #: The last good objects of each file, kept while the file is broken.
        self._accepted: dict[Path, list[Manifest]] = {}
        #: Per node id: the ACKed versions seen last, and when they changed.
        self.acks: dict[str, tuple[tuple[str, ...], float]] = {}

    # --- controller -----------------------------------------------------------------------------

    def controller_container(self, trust_domain: str) -> Container:
        argv = (
            sys.executable,
            "-m",
            "meshcp",
            "serve",
            "--source",
            str(self.paths.source),
            "--xds-address",
            f"{layout.GATEWAY}:{layout.XDS_PORT}",
            "--http-address",
            f"127.0.0.1:{layout.CONTROLLER_HTTP_PORT}",
            "--state-dir",
            str(self.paths.controller_state),
            "--xds-name",
            layout.CONTROLLER_NAME,
            "--xds-name",
            str(layout.GATEWAY),
            "--trust-domain",
            trust_domain,
        )
        env = (("PATH", os.environ.get("PATH", "/usr/bin:/bin")), ("PYTHONUNBUFFERED", "1"))
        return Container("meshcp-serve", argv, env, 0, 0, "/")

    async def proxies(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await get_json(
            layout.NODE_NETNS, layout.CONTROLLER_HTTP_PORT, "/debug/proxies"
        )
        return found

    # --- applying manifests --------------------------------------------------------------------

    async def apply(self, directory: Path) -> dict[str, Any]:
        async with self.lock:
            return await self._apply(directory)

    async def _apply(self, directory: Path) -> dict[str, Any]:
        try:
            manifests, broken = read_directory(directory)
        except ManifestError as error:
            raise LabError(str(error)) from None
        problems = list(broken.values())
        by_file: dict[Path, list[Manifest]] = {}
        for manifest in manifests:
            by_file.setdefault(manifest.path, []).append(manifest)
        for path in broken:
            if path in self._accepted:
                manifests += self._accepted[path]
                problems.append(f"{path}: keeping its last good objects")
        self._accepted = {**{p: m for p, m in self._accepted.items() if p in broken}, **by_file}
        manifests, deployment_problems = expand_deployments(manifests)
        problems += deployment_problems
        context = PlanContext(
            pod_dir=lambda ns, name: str(self.paths.pod_dir(ns, name)),
            path=f"{self.paths.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            new_uuid=lambda: str(uuid.uuid4()),
        )
        new = plan(manifests, self.allocation, context)
        problems += new.problems
        for problem in problems:
            log.warning("%s", problem)

        old_pods = self.pods
        keep = {
            key: runtime
            for key, runtime in old_pods.items()
            if key in new.pods and new.pods[key].fingerprint == runtime.planned.fingerprint
        }
        removed = [runtime for key, runtime in old_pods.items() if key not in keep]
        await asyncio.gather(*(runtime.stop() for runtime in removed))
        network.remove_hosts([r.planned.netns for r in removed if r.planned.key not in new.pods])

        self.plan, self.allocation, self.directory = new, new.allocation, directory
        self._write_source(new)
        await network.restore_nat(layout.NODE_NETNS, new.service_rules, flush=True)
        started = {key: PodRuntime(pod, self.paths) for key, pod in new.pods.items() if key not in keep}
        self.pods = {**keep, **started}
        for key, pod in new.pods.items():
            network.write_hosts(pod.netns, new.hosts[key])
        for runtime in keep.values():
            if runtime.planned.sidecar is None:
                await network.restore_nat(runtime.planned.netns, new.pod_service_rules, flush=True)
        # The CA is opened once for all the sidecars starting now (and anew each apply:
        # the controller may have rotated its root since).
        provider = None
        if any(runtime.planned.sidecar is not None for runtime in started.values()):
            settings = CaSettings(state_dir=self.paths.controller_state, trust_domain=new.mesh.trust_domain)
            provider = await open_provider(settings, create=True)
        try:
            volume = None
            if provider is not None:
                volume = partial(self._write_volume, Issuer(provider), await provider.trust_bundle())
            results = await asyncio.gather(
                *(runtime.start(self.group, volume, new.pod_service_rules) for runtime in started.values()),
                return_exceptions=True,
            )
        finally:
            if provider is not None:
                await close_provider(provider)
        for result in results:
            if isinstance(result, LabError):
                problems.append(str(result))
            elif isinstance(result, BaseException):
                raise result
        self.save_state()
        return {
            "problems": problems,
            "started": sorted(started),
            "stopped": sorted(r.planned.key for r in removed),
            "pods": len(self.pods),
        }

    def _write_source(self, new: LabPlan) -> None:
        """One file, replaced atomically, so the controller never reads half of it."""
        self.paths.source.mkdir(parents=True, exist_ok=True)
        target = self.paths.source / "lab.yaml"
        temporary = self.paths.source / ".lab.yaml.tmp"
        temporary.write_text(yaml.safe_dump_all([dict(obj) for obj in new.source], sort_keys=False))
        temporary.replace(target)

    async def _write_volume(self, issuer: Issuer, bundle: str, pod: PlannedPod) -> None:
        """The bootstrap volume the webhook would have put in a Secret: bootstrap, xDS client
        certificate and key (readable by the sidecar's user only), and the trust bundle."""
        sidecar = pod.sidecar
        assert sidecar is not None
        issued = await issuer.issue(xds_client_request(sidecar.proxy))
        renderer = mutation.BootstrapRenderer(sidecar.template)
        secret = mutation.bootstrap_secret(sidecar.candidate, sidecar.proxy, renderer, issued, bundle)
        directory = Path(sidecar.template.bootstrap_dir)
        await asyncio.to_thread(_write_secret, directory, secret["data"])

    # --- readiness and status ------------------------------------------------------------------

    async def wait_ready(self) -> None:
        """Until every pod runs and every sidecar has ACKed everything it was sent."""
        deadline = time.monotonic() + READY_TIMEOUT
        waiting: list[str] = ["the controller"]
        while time.monotonic() < deadline:
            waiting = await self.not_ready()
            if not waiting:
                return
            failed = [item for item in waiting if "Error" in item]
            if failed:
                raise LabError(f"pods failed to start: {', '.join(failed)}")
            await asyncio.sleep(POLL)
        raise LabError(f"not ready after {READY_TIMEOUT:.0f} s: {', '.join(waiting)}")

    async def not_ready(self) -> list[str]:
        try:
            proxies = await self.proxies()
        except (LabError, ValueError):
            return ["the controller (see meshcp lab logs controller)"]
        converged = {p["node_id"] for p in proxies if _converged(p)}
        waiting = []
        for key, runtime in sorted(self.pods.items()):
            if runtime.phase not in ("Running", "NotReady"):
                waiting.append(f"{key} ({runtime.phase})")
            elif runtime.planned.sidecar is not None and runtime.planned.node_id not in converged:
                waiting.append(f"{key} (sidecar)")
        return waiting

    async def watch_acks(self) -> None:
        """Remember when each proxy last ACKed something new (`lab status`)."""
        while True:
            with contextlib.suppress(LabError, ValueError):
                for proxy in await self.proxies():
                    versions = tuple(
                        str(t.get("version_acked") or "") for _, t in sorted(proxy.get("types", {}).items())
                    )
                    node = proxy["node_id"]
                    if self.acks.get(node, ((), 0.0))[0] != versions:
                        self.acks[node] = (versions, time.time())
            await asyncio.sleep(1.0)

    async def status(self) -> dict[str, Any]:
        try:
            proxies = {p["node_id"]: p for p in await self.proxies()}
            reachable = True
        except (LabError, ValueError):
            proxies, reachable = {}, False
        pods = []
        for _, runtime in sorted(self.pods.items()):
            item = runtime.status()
            proxy = proxies.get(runtime.planned.node_id)
            if runtime.planned.sidecar is None:
                item["sidecar"] = "-"
            elif proxy is None:
                item["sidecar"] = "not connected"
            else:
                item["sidecar"] = "ready" if _converged(proxy) else _lag(proxy)
            seen = self.acks.get(runtime.planned.node_id)
            item["last_ack"] = seen[1] if seen and any(seen[0]) else None
            pods.append(item)
        return {
            "directory": str(self.directory),
            "controller": {**self.controller.as_json(), "reachable": reachable},
            "pods": pods,
            "problems": list(self.plan.problems) if self.plan else [],
        }

    def save_state(self) -> None:
        """What `lab exec` and `lab logs` read without asking the supervisor."""
        state = {
            "directory": str(self.directory),
            "supervisor": os.getpid(),
            "allocation": self.allocation.as_json(),
            "pods": {
                key: {
                    "netns": runtime.planned.netns,
                    "ip": runtime.planned.ip,
                    "meshed": runtime.planned.sidecar is not None,
                    "containers": [c.as_json() for c in runtime.planned.containers],
                    "init": [c.as_json() for c in runtime.planned.init],
                }
                for key, runtime in sorted(self.pods.items())
            },
        }
        temporary = self.paths.state.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(self.paths.state)

    async def shutdown(self) -> None:
        await asyncio.gather(*(runtime.stop() for runtime in self.pods.values()))
        self.pods = {}


async def _listening(pod: PlannedPod) -> bool:
    """Whether the pod's readiness probes (tcpSocket, httpGet) pass within a while; a pod
    without probes is ready once its containers started, as in Kubernetes. The probes run
    against 127.0.0.1 in the pod, which the sidecar never intercepts."""
    deadline = time.monotonic() + PORTS_TIMEOUT
    for kind, port, path in pod.readiness:
        while not await _probe(pod.netns, kind, port, path):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL / 4)
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


def _converged(proxy: dict[str, Any]) -> bool:
    types = proxy.get("types", {})
    if not {"cds", "lds"} <= set(types):
        return False
    return all(
        t.get("version_sent")
        and t.get("version_acked") == t.get("version_sent")
        and not t.get("awaiting_ack")
        for t in types.values()
    )


def _lag(proxy: dict[str, Any]) -> str:
    types = proxy.get("types", {})
    nacked = [name for name, t in types.items() if t.get("last_nack")]
    waiting = [name for name in PROXY_TYPES if name in types and types[name].get("awaiting_ack")]
    if nacked:
        return "NACK " + ",".join(nacked)
    if waiting:
        return "awaiting " + ",".join(waiting)
    return "syncing"


def _write_secret(directory: Path, data: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name, encoded in data.items():
        path = directory / name
        private = name == mutation.KEY_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400 if private else 0o444)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(base64.b64decode(encoded))
        if private:
            os.chown(path, PROXY_USER, PROXY_USER)


# --- the process ---------------------------------------------------------------------------------


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
