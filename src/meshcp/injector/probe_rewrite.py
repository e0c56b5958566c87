"""Pointing a pod's HTTP(S) and TCP probes at the sidecar's probe listeners.

Once injected, the pod's inbound traffic is redirected to Envoy's mTLS listener, which
kubelet cannot pass. The sidecar therefore serves probe listeners without mTLS (one per
probe kind, `PROBE_PORTS`) that forward to the application, and the probes are rewritten
to reach them. What each rewritten probe stood for is recorded in the pod's
original-probes annotation, from which the bootstrap's probe listeners are built.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshcp.injector import fields
from meshcp.sidecar import iptables, ports

PROBE_FIELDS = {"liveness": "livenessProbe", "readiness": "readinessProbe", "startup": "startupProbe"}


@dataclass(frozen=True, slots=True)
class ProbeRewrite:
    """The JSONPatch operations replacing the probes, the original-probes annotation's
    entries, and warnings about the probes left as they are."""

    operations: list[dict[str, Any]]
    annotation: list[Any]
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class _Probe:
    index: int
    container: str
    kind: str
    probe: Mapping[str, Any]
    scheme: str  # HTTP, HTTPS or TCP
    port: int
    path: str = ""


def original_probes(pod: Mapping[str, Any]) -> list[Any]:
    """What the injection writes into the original-probes annotation of `pod`."""
    return rewrite_probes(fields.array(fields.mapping(pod.get("spec")).get("containers"))).annotation


def rewrite_probes(containers: Sequence[Mapping[str, Any]]) -> ProbeRewrite:
    """Point HTTP(S) and TCP probes at the sidecar's probe listeners, which kubelet reaches
    without mTLS; exec probes run inside the container and stay as they are.

    Every HTTP probe of a kind shares that kind's port and gets its own path
    (`/meshcp/<kind>/<container>`); the annotation tells the controller where each path
    leads. A TCP probe carries no path, so it can only be forwarded when it is the only probe
    of its kind in the pod; others are left untouched (with a warning): they then reach
    Envoy's inbound listener and only show that Envoy is up.
    """
    found: list[_Probe] = []
    warnings: list[str] = []
    for index, container in enumerate(containers):
        name = fields.string(container.get("name"))
        for kind, key in PROBE_FIELDS.items():
            probe = container.get(key)
            if isinstance(probe, dict):
                result = _classify(index, name, kind, probe, container)
                if isinstance(result, str):
                    warnings.append(result)
                elif result is not None:
                    found.append(result)
    ops: list[dict[str, Any]] = []
    annotation: list[Any] = []
    for probe in found:
        port = ports.PROBE_PORTS[probe.kind]
        same_kind = [p for p in found if p.kind == probe.kind]
        new = {k: copy.deepcopy(v) for k, v in probe.probe.items() if k not in ("httpGet", "tcpSocket")}
        entry: dict[str, Any] = {"container": probe.container, "probe": probe.kind, "sidecarPort": port}
        if probe.scheme == "TCP":
            if len(same_kind) > 1:
                warnings.append(
                    f"container {probe.container}: {probe.kind} TCP probe on port {probe.port} left as is "
                    f"(the pod has other {probe.kind} probes); it only checks that the sidecar is up"
                )
                continue
            new["tcpSocket"] = {"port": port}
        else:
            path = f"/meshcp/{probe.kind}/{probe.container}"
            http_get: dict[str, Any] = {"path": path, "port": port, "scheme": "HTTP"}
            headers = probe.probe["httpGet"].get("httpHeaders")
            if headers is not None:
                http_get["httpHeaders"] = copy.deepcopy(headers)
            new["httpGet"] = http_get
            entry["sidecarPath"] = path
            entry["path"] = probe.path
        entry.update(scheme=probe.scheme, port=probe.port)
        key = PROBE_FIELDS[probe.kind]
        ops.append({"op": "replace", "path": f"/spec/containers/{probe.index}/{key}", "value": new})
        annotation.append(entry)
    return ProbeRewrite(ops, annotation, warnings)


def _classify(
    index: int, name: str, kind: str, probe: Mapping[str, Any], container: Mapping[str, Any]
) -> _Probe | str | None:
    """The probe to rewrite, a warning about one that cannot be, or None (exec, unknown)."""
    for handler in ("httpGet", "tcpSocket"):
        action = probe.get(handler)
        if not isinstance(action, dict):
            continue
        if fields.string(action.get("host")):
            return None  # kubelet probes another host, not through this pod's iptables
        port = _resolve_port(action.get("port"), container)
        if port is None:
            return f"container {name}: {kind} probe port {action.get('port')!r:.40} not found; left as is"
        if handler == "tcpSocket":
            return _Probe(index, name, kind, probe, "TCP", port)
        path = action.get("path")
        path = path if isinstance(path, str) and path else "/"
        if not path.startswith("/"):
            path = "/" + path  # as kubelet's URL building does
        if not (path.isascii() and path.isprintable()) or " " in path:
            return f"container {name}: {kind} probe path {path!r:.40} cannot be forwarded; left as is"
        scheme = "HTTPS" if action.get("scheme") == "HTTPS" else "HTTP"
        return _Probe(index, name, kind, probe, scheme, port, path)
    if isinstance(probe.get("grpc"), dict):
        return (
            f"container {name}: {kind} gRPC probe left as is; exclude its port with "
            f"{iptables.INBOUND_PORT_EXCLUSIONS} or it reaches the sidecar's mTLS listener"
        )
    return None


def _resolve_port(value: object, container: Mapping[str, Any]) -> int | None:
    """A probe's port as kubelet resolves it: a number, a container port name, or digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        for entry in fields.array(container.get("ports")):
            number = fields.mapping(entry).get("containerPort")
            if (
                fields.mapping(entry).get("name") == value
                and isinstance(number, int)
                and not isinstance(number, bool)
            ):
                return number if 1 <= number <= 65535 else None
        value = int(value) if value.isascii() and value.isdigit() and len(value) <= 5 else None
    if isinstance(value, int) and 1 <= value <= 65535:
        return value
    return None
