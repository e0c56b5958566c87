"""JSONPatch (RFC 6902) operations on a pod, and the `Patch` that carries them to the API server.

A pointer into a map or list the pod lacks (or has as null) fails the whole patch, so the
helpers look at the pod first: they add to what exists and create what does not.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonpointer


@dataclass(frozen=True, slots=True)
class Patch:
    """The JSONPatch of a pod, and what the user should know about it."""

    operations: list[dict[str, Any]]
    warnings: tuple[str, ...] = ()

    def encoded(self) -> str:
        """As the AdmissionReview response carries it: base64 of the JSON."""
        return base64.b64encode(json.dumps(self.operations, separators=(",", ":")).encode()).decode()


def add_entries(
    ops: list[dict[str, Any]], parent: Mapping[str, Any], path: str, key: str, entries: Mapping[str, str]
) -> None:
    """Add map entries, creating the map when absent (or null: a pointer into null fails)."""
    if isinstance(parent.get(key), dict):
        for name, value in entries.items():
            ops.append({"op": "add", "path": f"{path}/{key}/{jsonpointer.escape(name)}", "value": value})
    else:
        ops.append({"op": "add", "path": f"{path}/{key}", "value": dict(entries)})


def append(ops: list[dict[str, Any]], parent: Mapping[str, Any], path: str, key: str, item: Any) -> None:
    """Append to a list, creating the list when absent (or null)."""
    if isinstance(parent.get(key), list):
        ops.append({"op": "add", "path": f"{path}/{key}/-", "value": item})
    else:
        ops.append({"op": "add", "path": f"{path}/{key}", "value": [item]})
