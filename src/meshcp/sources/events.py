"""The events every source emits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshcp.model.meta import ObjectRef
from meshcp.model.state import MeshObject, Problem


@dataclass(frozen=True, slots=True)
class Upsert:
    """An object was added or changed. `location` is `file:line` for manifests."""

    obj: MeshObject
    location: str = ""


@dataclass(frozen=True, slots=True)
class Delete:
    ref: ObjectRef


@dataclass(frozen=True, slots=True)
class Invalid:
    """An object (or a whole file) was rejected. The last good version of the object, if
    any, stays in the mesh; the problem is reported until a valid version replaces it."""

    problem: Problem


@dataclass(frozen=True, slots=True)
class Resolved:
    """A problem is gone (the file or object was fixed or removed)."""

    ref: ObjectRef


@dataclass(frozen=True, slots=True)
class Synced:
    """The source has reported everything it had at start: serving may begin."""

    source: str


Event = Upsert | Delete | Invalid | Resolved | Synced

#: How a source hands events to the store: synchronous, never blocks.
Emit = Callable[[Event], None]
