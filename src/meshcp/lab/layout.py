"""Where a lab lives: its names, addresses and files.

Everything the lab makes carries the `meshcp-lab` prefix (network namespaces, the
directory under /run, the /etc/netns entries), so that `lab down` can find and remove
all of it from the names alone, even when the lab crashed and left no state behind.
Addresses exist only inside the lab's namespaces: the host's own network is never touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

PREFIX = "meshcp-lab"
NODE_NETNS = f"{PREFIX}-node"
#: The node's bridge, and the node-side ends of the pods' veth pairs (`mlab<index>`).
BRIDGE = "mlab-br"
VETH_PREFIX = "mlab"

POD_CIDR = IPv4Network("10.244.0.0/16")
SERVICE_CIDR = IPv4Network("10.96.0.0/16")
#: The node's address on the bridge: the pods' gateway, and where the controller listens.
GATEWAY = IPv4Address("10.244.0.1")
#: Pods are numbered from here on (10.244.0.0/24 is the node's).
FIRST_POD = IPv4Address("10.244.1.2")
FIRST_SERVICE = IPv4Address("10.96.0.10")

#: The name sidecars expect on the controller's certificate.
CONTROLLER_NAME = "meshcp-controller.meshcp-system.svc"

#: Prometheus listens here in the node namespace (as the controller's HTTP endpoint does):
#: it reaches the pods through the bridge and the controller on loopback.
PROMETHEUS_HOST = "127.0.0.1"
PROMETHEUS_PORT = 9090
PROMETHEUS_URL = f"http://{PROMETHEUS_HOST}:{PROMETHEUS_PORT}"

CLUSTER_DOMAIN = "cluster.local"
ETC_NETNS = Path("/etc/netns")


def pod_netns(namespace: str, name: str) -> str:
    """The network namespace of a pod. Kubernetes namespace names have no dots, so the
    dot keeps `a-b/c` and `a/b-c` apart."""
    return f"{PREFIX}-{namespace}.{name}"


@dataclass(frozen=True)
class LabPaths:
    """The lab's files; all under one directory, removed by `lab down` (but `failure`)."""

    root: Path

    @classmethod
    def default(cls) -> LabPaths:
        return cls(Path(os.environ.get("MESHCP_LAB_DIR", f"/run/{PREFIX}")))

    @property
    def state(self) -> Path:
        """What the supervisor last applied (JSON): read by status, exec, logs."""
        return self.root / "state.json"

    @property
    def failure(self) -> Path:
        """Why the last lab stopped on its own (one line), beside the lab's directory so that
        it outlives it; removed by `lab down` and by the next lab."""
        return self.root.with_name(self.root.name + ".failure")

    @property
    def supervisor_pid(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def control(self) -> Path:
        """The supervisor's Unix socket."""
        return self.root / "control.sock"

    @property
    def source(self) -> Path:
        """The manifests `meshcp serve` watches: the user's, with the lab's addresses."""
        return self.root / "source"

    @property
    def controller_state(self) -> Path:
        """`meshcp serve --state-dir`: the mesh CA."""
        return self.root / "controller"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def bin(self) -> Path:
        """Binaries copied where the sidecar's UID can execute them."""
        return self.root / "bin"

    @property
    def prometheus(self) -> Path:
        """Prometheus's configuration, its scrape targets and its storage (`data/`)."""
        return self.root / "prometheus"

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.pods / f"{namespace}.{name}"

    def log(self, namespace: str, name: str, container: str) -> Path:
        return self.logs / f"{namespace}.{name}.{container}.log"
