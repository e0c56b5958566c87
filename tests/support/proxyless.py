"""A running `meshcp serve` (mTLS xDS, files source) and proxyless gRPC processes
bootstrapped by `meshcp bootstrap --proxyless`, all on loopback, for
tests/test_proxyless_grpc.py.

The mesh: namespace `shop`; service `greeter` (port 50051, `grpc`) split 80/20 over
`greeter-v1` and `greeter-v2` (one pod each, 127.0.0.2 and 127.0.0.3, each server bound
to its pod's IP: loopback only); proxyless clients `client` (allowed by a
TrafficTarget on `/meshtest.Echo/.*`) and `intruder` (no TrafficTarget). Upstreams are
pruned (MeshConfig's default), so the intruder is refused by its own config; with
`prune=False` it is refused by the server's RBAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import eventually, free_port

MESHCP = [sys.executable, "-m", "meshcp"]
APP = [sys.executable, "-m", "tests.support.grpc_app"]
ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "shop"
PORT = 50051
#: Every server pod's IP (its `status.podIP`, the address its server binds).
ADDRESSES = {"greeter-v1-0": "127.0.0.2", "greeter-v2-0": "127.0.0.3", "greeter-v1-1": "127.0.0.4"}

_HEAD = """\
apiVersion: config.meshcp.dev/v1alpha1
kind: MeshConfig
metadata: {name: meshcp}
spec:
  meshName: meshcp
  trustDomain: cluster.local
  permissive: false
  pruneUnreachableUpstreams: {prune}
  debounceWindow: 50ms
  debounceMax: 200ms
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {meshcp.dev/monitored-by: meshcp}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: greeter, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: intruder, namespace: shop}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: echo, namespace: shop}
spec:
  matches:
  - {name: echo, pathRegex: /meshtest.Echo/.*}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: client-to-greeter, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: greeter, namespace: shop}
  sources: [{kind: ServiceAccount, name: client, namespace: shop}]
  rules: [{kind: HTTPRouteGroup, name: echo, matches: [echo]}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: greeter, namespace: shop}
spec:
  service: greeter
  backends: [{service: greeter-v1, weight: 80}, {service: greeter-v2, weight: 20}]
"""


def _service(name: str, address: str, selector: str) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  clusterIP: {address}
  selector: {selector}
  ports: [{{name: grpc, port: {PORT}, targetPort: grpc}}]
"""


def pod(name: str, account: str, address: str, labels: str, port: int | None = None) -> str:
    """A ready proxyless pod; `port`: its container port named `grpc` (a server)."""
    ports = f", ports: [{{name: grpc, containerPort: {port}}}]" if port else ""
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels: {labels}
  annotations: {{meshcp.dev/proxyless: grpc}}
spec:
  serviceAccountName: {account}
  containers: [{{name: app, image: app{ports}}}]
status:
  podIP: {address}
  conditions: [{{type: Ready, status: "True"}}]
"""


@dataclass
class Mesh:
    """The controller and what the test started; `stop()` ends every process."""

    root: Path
    source: Path
    state: Path
    xds: int
    http: int
    debug: int
    ports: dict[str, int]
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    #: More arguments of every `meshcp bootstrap --proxyless` (e.g. `--watch-interval`).
    bootstrap_args: tuple[str, ...] = ()

    def write(self, name: str, text: str) -> None:
        """Add or replace one manifest file (the controller watches the directory)."""
        temp = self.source / f".{name}.tmp"
        temp.write_text(text)
        temp.replace(self.source / name)

    def remove(self, name: str) -> None:
        (self.source / name).unlink()

    async def bootstrap(self, pod_name: str) -> Path:
        out = self.root / "pods" / pod_name
        status, printed, err = await run(
            "bootstrap", pod_name, "-n", NAMESPACE, "--source", str(self.source),
            "--state-dir", str(self.state), "--out", str(out), "--proxyless",
            "--xds-address", f"127.0.0.1:{self.xds}", *self.bootstrap_args,
        )  # fmt: skip
        assert status == 0, err
        assert "proxyless gRPC" in printed
        return out / "bootstrap.json"

    async def server(self, pod_name: str, name: str) -> asyncio.subprocess.Process:
        """The proxyless server of `pod_name` on its port, answering `name`."""
        bootstrap = await self.bootstrap(pod_name)
        log = (self.root / f"{pod_name}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            *APP, "server", "--address", ADDRESSES[pod_name], "--port", str(self.ports[pod_name]),
            "--name", name,
            env=_env(bootstrap), stdout=log, stderr=log, cwd=ROOT,
        )  # fmt: skip
        log.close()
        self.processes.append(process)
        return process

    async def calls(
        self,
        pod_name: str,
        target: str,
        count: int,
        *,
        call_timeout: float = 20.0,
        warmup: bool = True,
        method: str = "/meshtest.Echo/Who",
    ) -> dict[str, Any]:
        """`count` sequential calls from a proxyless client of `pod_name` (`warmup`: the
        first waits for the channel to be ready)."""
        bootstrap = await self.bootstrap(pod_name)
        process = await asyncio.create_subprocess_exec(
            *APP, "client", "--target", target, "--count", str(count), "--timeout", str(call_timeout),
            *([] if warmup else ["--no-warmup"]), "--method", method,
            env=_env(bootstrap), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        self.processes.append(process)
        out, err = await asyncio.wait_for(process.communicate(), 300)
        assert process.returncode == 0, err.decode()[-3000:]
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    async def client_loop(self, pod_name: str, target: str, until: Path) -> asyncio.subprocess.Process:
        """A client calling until the file `until` exists (then it prints its counts)."""
        bootstrap = await self.bootstrap(pod_name)
        process = await asyncio.create_subprocess_exec(
            *APP, "client", "--target", target, "--until", str(until),
            env=_env(bootstrap), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        self.processes.append(process)
        return process

    async def refresher(self, pod_name: str, seconds: float) -> asyncio.subprocess.Process:
        """`meshcp bootstrap --proxyless --refresh SECONDS` for `pod_name`, in the background."""
        log = (self.root / f"refresh-{pod_name}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            *MESHCP, "bootstrap", pod_name, "-n", NAMESPACE, "--source", str(self.source),
            "--state-dir", str(self.state), "--out", str(self.root / "pods" / pod_name), "--proxyless",
            "--xds-address", f"127.0.0.1:{self.xds}", *self.bootstrap_args, "--refresh", str(seconds),
            stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        log.close()
        self.processes.append(process)
        return process

    def metric(self, name: str) -> float:
        """The sum of a controller metric's samples (its own /metrics)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def proxies(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.debug}/debug/proxies", timeout=10) as response:
            found: list[dict[str, Any]] = json.loads(response.read())
        return found

    async def stop(self) -> None:
        for process in reversed(self.processes):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


def _env(bootstrap: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GRPC_XDS_BOOTSTRAP"] = str(bootstrap)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("GRPC_TRACE", None)
    env["GRPC_VERBOSITY"] = env.get("GRPC_VERBOSITY", "ERROR")
    return env


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *MESHCP, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def servers_manifest(ports: dict[str, int], extra: dict[str, tuple[str, str]] | None = None) -> str:
    """The greeter services and server pods; `extra`: more v1 pods (name -> address, version)."""
    parts = [
        _service("greeter", "10.96.0.10", "{app: greeter}"),
        _service("greeter-v1", "10.96.0.11", "{app: greeter, version: v1}"),
        _service("greeter-v2", "10.96.0.12", "{app: greeter, version: v2}"),
    ]
    pods = {
        "greeter-v1-0": (ADDRESSES["greeter-v1-0"], "v1"),
        "greeter-v2-0": (ADDRESSES["greeter-v2-0"], "v2"),
    }
    pods.update(extra or {})
    for name, (address, version) in pods.items():
        if name in ports:
            parts.append(pod(name, "greeter", address, f"{{app: greeter, version: {version}}}", ports[name]))
    return "---\n".join(parts)


def clients_manifest() -> str:
    return "---\n".join([
        pod("client-0", "client", "127.0.0.10", "{app: client}"),
        pod("intruder-0", "intruder", "127.0.0.11", "{app: intruder}"),
    ])  # fmt: skip


@contextlib.asynccontextmanager
async def running_mesh(root: Path, *serve_args: str, prune: bool = True) -> AsyncIterator[Mesh]:
    source, state = root / "mesh", root / "state"
    source.mkdir()
    ports = {name: free_port() for name in ("greeter-v1-0", "greeter-v2-0", "greeter-v1-1")}
    (source / "mesh.yaml").write_text(_HEAD.replace("{prune}", "true" if prune else "false"))
    (source / "clients.yaml").write_text(clients_manifest())
    (source / "servers.yaml").write_text(
        servers_manifest({k: v for k, v in ports.items() if k != "greeter-v1-1"})
    )
    log_path = root / "controller.log"
    log = log_path.open("wb")
    controller = await asyncio.create_subprocess_exec(
        *MESHCP, "serve", "--source", str(source), "--state-dir", str(state),
        "--xds-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", "--debug-address", "127.0.0.1:0",
        *serve_args, stderr=log, stdout=log,
    )  # fmt: skip
    log.close()
    mesh: Mesh | None = None
    try:
        found: dict[str, int] = {}

        async def listening() -> bool:
            text = log_path.read_text()
            if match := re.search(r"serving xDS on 127\.0\.0\.1:(\d+) .*HTTP on 127\.0\.0\.1:(\d+)", text):
                found["xds"], found["http"] = int(match[1]), int(match[2])
            if match := re.search(r"serving /debug on 127\.0\.0\.1:(\d+)", text):
                found["debug"] = int(match[1])
            return len(found) == 3 or controller.returncode is not None

        await eventually(listening, 60, "the controller to listen", details=log_path.read_text)
        assert controller.returncode is None, log_path.read_text()
        mesh = Mesh(root, source, state, found["xds"], found["http"], found["debug"], ports)
        yield mesh
    finally:
        if mesh is not None:
            await mesh.stop()
        controller.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(controller.wait(), 30)
        except TimeoutError:
            controller.kill()
            await controller.wait()
