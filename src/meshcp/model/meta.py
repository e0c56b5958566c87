"""What every object has: a kind, a place, a name, labels and annotations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Identifies an object: kind, namespace ("" for cluster-scoped kinds) and name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class Meta:
    """Object metadata meshcp uses. `labels`/`annotations` are read-only mappings."""

    name: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.namespace,
                tuple(sorted(self.labels.items())),
                tuple(sorted(self.annotations.items())),
            )
        )


def frozen_map(values: Mapping[str, str] | None) -> Mapping[str, str]:
    """An immutable copy with keys in sorted order (stable iteration, stable output)."""
    if not values:
        return _EMPTY
    return MappingProxyType({key: values[key] for key in sorted(values)})
