"""What meshcp serves for a generated mesh, written for another control plane to serve.

    python benchmarks/peer_dump.py --services 200 --pods 5 --out /tmp/mesh.dump [--mesh DIR]

Builds the mesh of `mesh_manifests.py` (the shape options of `mesh_scale.py`), reads it the
way `meshcp serve --source DIR` does (`FileSource`), compiles it with meshcp's own
`Reconciler`, issues the certificates (internal CA, in memory) and publishes every proxy
class with meshcp's `Publisher` into a `SnapshotCache`, exactly as a controller round does.
Then it makes the `endpoint` change of `mesh_changes.py` (one pod's IP; its service's file
rewritten), compiles and publishes again on the same reconciler, and records what changed.

The dump (read by `peers/go-control-plane`), little-endian, strings and byte strings each
prefixed by a u32 length:

- `MESHDMP1`;
- resources: u32 count, then per resource: u8 type (0 cluster, 1 endpoint, 2 listener,
  3 route, 4 secret), name, version, body (the serialized `google.protobuf.Any` meshcp
  sends; every distinct resource once);
- classes: u32 count, then per class: key, then per type (5): version (meshcp's content
  version of that type), u32 count, u32 resource indices;
- nodes: u32 count, then per simulated proxy: node id, node cluster, class key;
- the change: u32 count, then per (class, type) that changed: key, u8 type, new version,
  u32 count of resource indices that replace or add, the indices, u32 count of removed
  names, the names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import mesh_manifests as mm
from mesh_changes import make_change

from meshcp.cache import Encoder, SnapshotCache
from meshcp.cache.resource import Resource
from meshcp.cache.resource_types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshcp.cache.snapshot import Snapshot
from meshcp.certs import InternalCA, Issuer, MemoryStore, workload_certificates
from meshcp.identity import ProxyIdentity
from meshcp.model.state import MeshObject, MeshState
from meshcp.runtime.publish import Publisher
from meshcp.runtime.reconcile import Reconciler
from meshcp.sources.events import Upsert
from meshcp.sources.files import FileSource

TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
MAGIC = b"MESHDMP1"


def read_state(mesh: Path) -> MeshState:
    """The directory's objects, read by meshcp's own file source (one full read)."""
    objects: list[MeshObject] = []

    def emit(event: object) -> None:
        if isinstance(event, Upsert):
            objects.append(event.obj)

    FileSource(mesh, emit)._refresh(None)
    return MeshState().with_changes(objects)


class Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.index: dict[int, int] = {}
        self.resources: list[Resource] = []

    def u32(self, value: int) -> None:
        self.parts.append(struct.pack("<I", value))

    def blob(self, data: bytes) -> None:
        self.u32(len(data))
        self.parts.append(data)

    def text(self, value: str) -> None:
        self.blob(value.encode())

    def ref(self, resource: Resource) -> int:
        """The index of a resource in the dump's table (added on first sight)."""
        found = self.index.get(id(resource))
        if found is None:
            found = self.index[id(resource)] = len(self.resources)
            self.resources.append(resource)  # held: ids stay unique
        return found

    def refs(self, resources: Iterable[Resource]) -> list[int]:
        return [self.ref(r) for r in resources]


class Compiled:
    """meshcp's controller pipeline without the server: reconcile, certificates, publish."""

    def __init__(self) -> None:
        self.encoder = Encoder()
        self.cache = SnapshotCache()
        self.reconciler = Reconciler(self.encoder)

    async def start(self) -> None:
        ca = await InternalCA.open(MemoryStore())
        self.certificates = workload_certificates(Issuer(ca))
        self.publisher = Publisher(self.cache, self.encoder, self.certificates)
        self.publisher.set_trust_bundle(await ca.trust_bundle())

    async def apply(self, state: MeshState) -> None:
        classes = self.reconciler.apply(state)
        identities = {c.identity for c in classes}
        await asyncio.gather(*(self.certificates.get(i) for i in identities))
        self.publisher.update(classes)  # every identity has its certificate: all published

    def snapshots(self) -> dict[str, Snapshot]:
        out = {}
        keys = self.cache.keys()
        for key in keys:
            snapshot = self.cache.get(key)
            assert snapshot is not None
            out[key] = snapshot
        return out


async def dump(shape: mm.Shape, mesh: Path) -> tuple[bytes, dict[str, float]]:
    figures: dict[str, float] = {}
    compiled = Compiled()
    await compiled.start()
    t0 = time.perf_counter()
    await compiled.apply(read_state(mesh))
    figures["compile_s"] = time.perf_counter() - t0
    before = compiled.snapshots()
    policy = compiled.reconciler.policy
    w = Writer()
    classes: list[tuple[str, list[tuple[str, list[int]]]]] = []
    for key, snapshot in sorted(before.items()):
        per_type = [(snapshot.version(t), w.refs(snapshot.resources(t).values())) for t in TYPES]
        classes.append((key, per_type))
    nodes: list[tuple[str, str, str]] = []
    for proxy in mm.proxies(shape):
        pod = policy.proxies.get(ProxyIdentity.parse(proxy.node_id).proxy_uuid)
        key = policy.pod_classes.get(pod, "") if pod is not None else ""
        if key not in before:
            raise RuntimeError(f"proxy {proxy.node_id} has no published class")
        nodes.append((proxy.node_id, proxy.cluster, key))

    # the endpoint change, compiled on the same reconciler (incremental, as the controller's)
    make_change("endpoint", shape, mesh, mesh)
    t0 = time.perf_counter()
    await compiled.apply(read_state(mesh))
    figures["change_compile_s"] = time.perf_counter() - t0
    after = compiled.snapshots()
    if after.keys() != before.keys():
        raise RuntimeError("the endpoint change added or removed classes")
    change: list[tuple[str, int, str, list[int], list[str]]] = []
    for key, snapshot in sorted(after.items()):
        old = before[key]
        for kind, t in enumerate(TYPES):
            if snapshot.version(t) == old.version(t):
                continue
            new, gone = snapshot.resources(t), old.resources(t)
            changed = [r for name, r in new.items() if name not in gone or gone[name].version != r.version]
            removed = [name for name in gone if name not in new]
            change.append((key, kind, snapshot.version(t), w.refs(changed), removed))

    body = Writer()
    body.parts.append(MAGIC)
    body.u32(len(w.resources))
    for r in w.resources:
        body.parts.append(bytes([TYPES.index(r.type_url)]))
        body.text(r.name)
        body.text(r.version)
        body.blob(r.body)
    body.u32(len(classes))
    for key, per_type in classes:
        body.text(key)
        for version, indices in per_type:
            body.text(version)
            body.u32(len(indices))
            body.parts.append(struct.pack(f"<{len(indices)}I", *indices))
    body.u32(len(nodes))
    for node_id, cluster, key in nodes:
        body.text(node_id)
        body.text(cluster)
        body.text(key)
    body.u32(len(change))
    for key, kind, version, indices, removed in change:
        body.text(key)
        body.parts.append(bytes([kind]))
        body.text(version)
        body.u32(len(indices))
        body.parts.append(struct.pack(f"<{len(indices)}I", *indices))
        body.u32(len(removed))
        for name in removed:
            body.text(name)
    data = b"".join(body.parts)
    changed_classes = {c[0] for c in change}
    figures.update(
        resources=len(w.resources),
        classes=len(classes),
        nodes=len(nodes),
        change_entries=len(change),
        change_classes=len(changed_classes),
        change_resources=sum(len(c[3]) for c in change),
        change_nodes=sum(1 for _, _, key in nodes if key in changed_classes),
        bytes=len(data),
    )
    return data, figures


def shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The mesh shape options of `mesh_scale.py` (`--no-prune` for every service everywhere)."""
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--namespaces", type=int, default=0, help="default: services / 10, at least 1")
    parser.add_argument("--pods", type=int, default=5, help="pods (proxies) per service")
    parser.add_argument("--sources", type=int, default=5, help="allowed client identities per service (SMI)")
    parser.add_argument("--mode", choices=["smi", "permissive"], default="smi")
    prune = parser.add_mutually_exclusive_group()
    prune.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="MeshConfig pruneUnreachableUpstreams: false: every proxy gets every service "
        "(the default, as in meshcp, gives each proxy only the services it may reach)",
    )
    prune.add_argument("--prune", dest="prune", action="store_true", help="the default, said explicitly")
    parser.set_defaults(prune=True)


def shape_of(args: argparse.Namespace) -> mm.Shape:
    return mm.Shape(
        args.services,
        args.namespaces or max(1, args.services // 10),
        args.pods,
        args.sources,
        permissive=args.mode == "permissive",
        prune=args.prune,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shape_arguments(parser)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--figures", type=Path, default=None, help="also write the figures here (JSON)")
    parser.add_argument(
        "--mesh", type=Path, default=None, help="write the mesh here (default: a temporary directory)"
    )
    args = parser.parse_args()
    shape = shape_of(args)
    mesh = args.mesh or Path(tempfile.mkdtemp(prefix="peer-dump-"))
    try:
        mm.write_mesh(mesh, shape)
        data, figures = asyncio.run(dump(shape, mesh))
        args.out.write_bytes(data)
    finally:
        if args.mesh is None:
            shutil.rmtree(mesh, ignore_errors=True)
    print(" ".join(f"{k}={v:g}" for k, v in figures.items()), file=sys.stderr)
    if args.figures is not None:
        args.figures.write_text(json.dumps(figures))


if __name__ == "__main__":
    main()
