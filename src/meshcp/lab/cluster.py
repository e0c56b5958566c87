"""The running lab as a cluster: the controller, the pods, and what `lab apply` and `lab
status` do to them.

An apply reads the manifests, plans them (`plan`, pure), replaces the pods whose plan
changed and leaves the others running, then rewrites what the controller and the pods read:
the controller's source manifests, the kube-proxy rules, each pod's /etc/hosts and
Prometheus's list of sidecars to scrape. A file that stops parsing keeps its last good
objects, so that a typo does not tear down its pods.

Prometheus (Debian's `prometheus`, optional: the lab runs without it when it is not
installed) runs in the node namespace like the controller, scraping the controller and
every sidecar's Prometheus listener; its files and storage live in the lab's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from meshcp.certs.issuer import Issuer
from meshcp.certs.setup import CaSettings, close_provider, open_provider
from meshcp.lab import layout, network, processes
from meshcp.lab.addresses import Allocation
from meshcp.lab.bootstrap_volume import write_bootstrap_volume
from meshcp.lab.layout import LabPaths
from meshcp.lab.manifests import Manifest, ManifestError, expand_deployments, read_directory
from meshcp.lab.netns_http import get, get_json
from meshcp.lab.network import LabError
from meshcp.lab.plan import LabPlan, PlanContext, plan, prometheus_config, prometheus_targets
from meshcp.lab.pod_runtime import PodRuntime
from meshcp.lab.pods import Container
from meshcp.lab.proxy_status import acked_versions, converged, lag
from meshcp.sidecar import ports

log = logging.getLogger("meshcp.lab")

READY_TIMEOUT = 120.0
POLL = 0.2
#: The controller's HTTP endpoints (health and /metrics; /debug), on the node's loopback.
CONTROLLER_HTTP = f"127.0.0.1:{ports.CONTROLLER_HTTP_PORT}"
CONTROLLER_DEBUG = f"127.0.0.1:{ports.CONTROLLER_DEBUG_PORT}"


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
        self.prometheus = processes.ContainerState("prometheus")
        #: The `prometheus` executable, or None when it is not installed (no Prometheus).
        self.prometheus_binary = shutil.which("prometheus")
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
            f"{layout.GATEWAY}:{ports.XDS_PORT}",
            "--http-address",
            CONTROLLER_HTTP,
            "--debug-address",
            CONTROLLER_DEBUG,
            "--state-dir",
            str(self.paths.controller_state),
            "--xds-name",
            layout.CONTROLLER_NAME,
            "--xds-name",
            str(layout.GATEWAY),
            "--trust-domain",
            trust_domain,
            *(() if self.prometheus_binary is None else ("--prometheus-url", layout.PROMETHEUS_URL)),
        )
        env = [("PATH", os.environ.get("PATH", "/usr/bin:/bin")), ("PYTHONUNBUFFERED", "1")]
        if "PYTHONPATH" in os.environ:  # a lab started from a source tree runs that tree's controller
            env.append(("PYTHONPATH", os.environ["PYTHONPATH"]))
        return Container("meshcp-serve", argv, tuple(env), 0, 0, "/")

    # --- Prometheus ------------------------------------------------------------------------------

    def prometheus_container(self, binary: str) -> Container:
        directory = self.paths.prometheus
        argv = (
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={layout.PROMETHEUS_HOST}:{layout.PROMETHEUS_PORT}",
        )
        return Container("prometheus", argv, (("PATH", "/usr/bin:/bin"),), 0, 0, str(directory))

    def start_prometheus(self) -> None:
        """Write its configuration and run it (restarted when it exits, as the controller
        is), if it is installed. Its targets follow every apply (`_write_targets`)."""
        if self.prometheus_binary is None:
            log.warning("prometheus is not installed (apt-get install -y prometheus): no metrics in this lab")
            return
        directory = self.paths.prometheus
        (directory / "data").mkdir(parents=True, exist_ok=True)
        targets = directory / "sidecars.json"
        if not targets.exists():
            targets.write_text("[]\n")
        (directory / "prometheus.yml").write_text(prometheus_config(str(targets), CONTROLLER_HTTP))
        keeper = processes.keep_running(
            layout.NODE_NETNS,
            self.prometheus_container(self.prometheus_binary),
            self.paths.logs / "prometheus.log",
            self.prometheus,
        )
        self.group.create_task(processes.part("the keeper of Prometheus", keeper))

    def _write_targets(self, new: LabPlan) -> None:
        """Replaced atomically: Prometheus re-reads the file when it changes."""
        if self.prometheus_binary is None:
            return
        self.paths.prometheus.mkdir(parents=True, exist_ok=True)
        temporary = self.paths.prometheus / ".sidecars.json.tmp"
        temporary.write_text(prometheus_targets(new.pods))
        temporary.replace(self.paths.prometheus / "sidecars.json")

    async def prometheus_status(self) -> dict[str, Any] | None:
        if self.prometheus_binary is None:
            return None
        try:
            code, _ = await get(layout.NODE_NETNS, layout.PROMETHEUS_PORT, "/-/ready", layout.PROMETHEUS_HOST)
            ready = code == 200
        except LabError:
            ready = False
        url, netns = layout.PROMETHEUS_URL, layout.NODE_NETNS
        return {**self.prometheus.as_json(), "ready": ready, "url": url, "netns": netns}

    async def proxies(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await get_json(
            layout.NODE_NETNS, ports.CONTROLLER_DEBUG_PORT, "/debug/proxies"
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
        self._write_targets(new)
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
        if any(r.planned.sidecar is not None or r.planned.proxyless is not None for r in started.values()):
            settings = CaSettings(state_dir=self.paths.controller_state, trust_domain=new.mesh.trust_domain)
            provider = await open_provider(settings, create=True)
        try:
            volume = None
            if provider is not None:
                volume = partial(write_bootstrap_volume, Issuer(provider), await provider.trust_bundle())
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
        ready = {p["node_id"] for p in proxies if converged(p)}
        waiting = []
        for key, runtime in sorted(self.pods.items()):
            if runtime.phase not in ("Running", "NotReady"):
                waiting.append(f"{key} ({runtime.phase})")
            elif runtime.planned.sidecar is not None and runtime.planned.node_id not in ready:
                waiting.append(f"{key} (sidecar)")
        return waiting

    async def watch_acks(self) -> None:
        """Remember when each proxy last ACKed something new (`lab status`)."""
        while True:
            with contextlib.suppress(LabError, ValueError):
                for proxy in await self.proxies():
                    versions = acked_versions(proxy)
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
            if runtime.planned.proxyless is not None:  # gRPC connects when the app first needs xDS
                state = "not connected" if proxy is None else "connected" if converged(proxy) else lag(proxy)
                item["sidecar"] = f"proxyless ({state})"
            elif runtime.planned.sidecar is None:
                item["sidecar"] = "-"
            elif proxy is None:
                item["sidecar"] = "not connected"
            else:
                item["sidecar"] = "ready" if converged(proxy) else lag(proxy)
            seen = self.acks.get(runtime.planned.node_id)
            item["last_ack"] = seen[1] if seen and any(seen[0]) else None
            pods.append(item)
        return {
            "directory": str(self.directory),
            "controller": {**self.controller.as_json(), "reachable": reachable},
            "prometheus": await self.prometheus_status(),
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
