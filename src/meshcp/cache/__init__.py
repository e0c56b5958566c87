"""Encoded, hashed resources and per-proxy-class snapshots.

The cache knows Envoy resource types but nothing of SMI or Kubernetes, and does no I/O:
streams learn about changes through plain callbacks (see `SnapshotCache.watch`).
"""

from meshcp.cache.diff import diff
from meshcp.cache.encoding import Encoder, canonical_bytes, pack
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import Snapshot
from meshcp.cache.snapshot_cache import SnapshotCache

__all__ = ["Encoder", "Resource", "Snapshot", "SnapshotCache", "canonical_bytes", "diff", "pack"]
