"""The changes a mesh scale run makes to the running mesh, one at a time (`--changes`).

- `endpoint`: one pod's IP changes (its service's file is rewritten);
- `target`: a new TrafficTarget lets one more identity reach one service (SMI mode);
- `split`: one TrafficSplit goes from 50/50 to 90/10;
- `rotate`: `meshcp ca rotate` on the controller's state directory (a root rotation);
- `renew`: made by the controller itself, on its renewal timer (see `mesh_run.Run`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mesh_manifests as mm

CHANGES = ("endpoint", "target", "split", "rotate", "renew")


def changed_service(shape: mm.Shape) -> int:
    """The service the changes touch: service 1 (0 in a one-service mesh)."""
    return min(1, shape.services - 1)


def make_change(name: str, shape: mm.Shape, mesh: Path, state: Path) -> str:
    """Make change `name` (not `renew`) in the mesh under `mesh`, served with CA state in
    `state`; returns why nothing changed, or "" when it did."""
    service = changed_service(shape)
    if name == "endpoint":
        mm.write_documents(
            mesh, mm.service_file(shape, service), mm.service_documents(shape, service, moved=0)
        )
    elif name == "target":
        newcomer = (service + shape.sources + 1) % shape.services
        doc = mm.traffic_target(shape, service, [newcomer], name=f"{mm.service(shape, service)}-extra")
        mm.write_documents(mesh, f"{mm.namespace(shape, service)}/extra-target.yaml", [doc])
    elif name == "split":
        apexes = mm.split_apexes(shape)
        if not apexes:
            return "no TrafficSplit at this size"
        mm.write_documents(
            mesh, mm.split_file(shape, apexes[0]), [mm.traffic_split(shape, apexes[0], (90, 10))]
        )
    elif name == "rotate":
        subprocess.run(
            [sys.executable, "-m", "meshcp", "ca", "rotate", "--state-dir", str(state)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return ""
