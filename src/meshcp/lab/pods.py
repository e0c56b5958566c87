"""What the plan makes of a pod: its containers as host processes, its sidecar, and its
manifest as `meshcp serve` sees it; and `PodProblem`, why a pod cannot run in the lab.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshcp.identity import ProxyIdentity
from meshcp.injector.decision import Candidate
from meshcp.injector.template import SidecarTemplate
from meshcp.lab import layout
from meshcp.sidecar import ports

#: The sidecar's user, as the injector sets it: the bootstrap volume's key is readable by it
#: alone, and `lab exec` never runs a command as it (its traffic would bypass the sidecar).
PROXY_USER = ports.PROXY_UID


class PodProblem(Exception):
    """The pod cannot run in the lab as written; the message says why. It is reported and
    the pod left out, while the rest of the lab runs."""


@dataclass(frozen=True)
class Container:
    """One process of a pod: what runs, as whom, where."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    uid: int
    gid: int
    cwd: str

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": list(self.argv),
            "env": [list(pair) for pair in self.env],
            "uid": self.uid,
            "gid": self.gid,
            "cwd": self.cwd,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Container:
        return cls(
            data["name"],
            tuple(data["argv"]),
            tuple((str(k), str(v)) for k, v in data["env"]),
            int(data["uid"]),
            int(data["gid"]),
            data["cwd"],
        )


@dataclass(frozen=True)
class Sidecar:
    """What the lab needs to write a meshed pod's bootstrap volume."""

    candidate: Candidate
    proxy: ProxyIdentity
    template: SidecarTemplate


@dataclass(frozen=True)
class Proxyless:
    """What the lab needs to write a proxyless gRPC pod's files (the injector's Secret):
    its containers read them under `directory`, as `GRPC_XDS_BOOTSTRAP` says."""

    candidate: Candidate
    proxy: ProxyIdentity
    template: SidecarTemplate
    directory: str


@dataclass(frozen=True)
class PlannedPod:
    namespace: str
    name: str
    ip: str
    interface: int
    service_account: str
    init: tuple[Container, ...]
    containers: tuple[Container, ...]
    #: The pod as `meshcp serve` sees it (injected, with status).
    manifest: Mapping[str, Any]
    sidecar: Sidecar | None
    #: Changes when anything the pod runs changes: such a pod is replaced on apply.
    fingerprint: str
    #: The containers' readiness probes as the user wrote them (before injection points
    #: them at the sidecar): ("tcp" | "http", port, path).
    readiness: tuple[tuple[str, int, str], ...] = ()
    #: A proxyless gRPC pod (no sidecar, no iptables): its gRPC bootstrap and certificates.
    proxyless: Proxyless | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns(self) -> str:
        return layout.pod_netns(self.namespace, self.name)

    @property
    def node_id(self) -> str:
        if self.proxyless is not None:
            return self.proxyless.proxy.name
        return self.sidecar.proxy.name if self.sidecar is not None else ""
