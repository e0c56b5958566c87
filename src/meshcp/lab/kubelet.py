"""The kubelet's part: a pod's containers as host processes (command, environment, user,
working directory) and the readiness probes the lab can run from outside.

The lab runs commands from this machine and ignores images, so a container without a
command cannot run; and it supports the environment a pod's own fields give (values,
fieldRefs), not ConfigMaps or Secrets, which it has no API server to read from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshcp.injector import fields
from meshcp.lab.pods import Container, PodProblem


def pod_env(*, name: str, namespace: str, ip: str, service_account: str) -> dict[str, str]:
    """What every container of the pod finds in its environment."""
    return {
        "POD_NAME": name,
        "POD_NAMESPACE": namespace,
        "POD_IP": ip,
        "SERVICE_ACCOUNT": service_account,
        "HOSTNAME": name,
    }


def container(
    container: Mapping[str, Any],
    *,
    pod: Mapping[str, Any],
    pod_env: Mapping[str, str],
    directory: Path,
    path: str,
) -> Container:
    """One container of `pod` as a process: `directory` is its default working directory
    (its manifest's), `path` its PATH."""
    name = fields.string(container.get("name"))
    command = [str(part) for part in container.get("command") or ()]
    args = [str(part) for part in container.get("args") or ()]
    if not command:
        raise PodProblem(
            f"container {name} has no command: the lab runs commands from this machine and ignores images"
        )
    env = {"PATH": path, **pod_env}
    for entry in container.get("env") or ():
        if not isinstance(entry, dict) or not fields.string(entry.get("name")):
            raise PodProblem(f"container {name}: env entries need a name")
        env[entry["name"]] = _env_value(entry, pod, pod_env, name)
    context_of = fields.mapping(container.get("securityContext"))
    pod_context = fields.mapping(fields.mapping(pod.get("spec")).get("securityContext"))
    uid = context_of.get("runAsUser", pod_context.get("runAsUser", 0))
    gid = context_of.get("runAsGroup", pod_context.get("runAsGroup", uid))
    if not isinstance(uid, int) or not isinstance(gid, int):
        raise PodProblem(f"container {name}: runAsUser and runAsGroup must be numbers")
    cwd = fields.string(container.get("workingDir")) or str(directory)
    return Container(name, tuple(command + args), tuple(sorted(env.items())), uid, gid, cwd)


def readiness(pod: Mapping[str, Any]) -> tuple[tuple[str, int, str], ...]:
    """tcpSocket and httpGet readiness probes; exec probes cannot be run from outside."""
    out = []
    for container in fields.mapping(pod.get("spec")).get("containers") or ():
        if not isinstance(container, dict):
            continue
        probe = fields.mapping(container.get("readinessProbe"))
        ports = {
            p.get("name"): p.get("containerPort") for p in container.get("ports") or () if isinstance(p, dict)
        }
        for kind, action in (("tcp", "tcpSocket"), ("http", "httpGet")):
            spec = fields.mapping(probe.get(action))
            port = spec.get("port")
            port = ports.get(port) if isinstance(port, str) else port
            if isinstance(port, int):
                out.append((kind, port, fields.string(spec.get("path")) or "/"))
    return tuple(out)


def _env_value(
    entry: Mapping[str, Any], pod: Mapping[str, Any], pod_env: Mapping[str, str], container: str
) -> str:
    if "value" in entry:
        return str(entry["value"])
    field_path = fields.string(
        fields.mapping(fields.mapping(entry.get("valueFrom")).get("fieldRef")).get("fieldPath")
    )
    values = {
        "metadata.name": pod_env["POD_NAME"],
        "metadata.namespace": pod_env["POD_NAMESPACE"],
        "status.podIP": pod_env["POD_IP"],
        "spec.serviceAccountName": pod_env["SERVICE_ACCOUNT"],
    }
    if field_path in values:
        return values[field_path]
    labels = fields.mapping(fields.mapping(pod.get("metadata")).get("labels"))
    if field_path.startswith("metadata.labels['") and field_path.endswith("']"):
        return str(labels.get(field_path[17:-2], ""))
    raise PodProblem(
        f"container {container}: env {entry.get('name')}: only value and fieldRef "
        f"({', '.join(sorted(values))}, metadata.labels['...']) are supported in the lab"
    )
