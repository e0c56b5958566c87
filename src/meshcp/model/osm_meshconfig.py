"""OSM's MeshConfig (config.openservicemesh.io), and how it combines with meshcp's own.

A cluster leaving Open Service Mesh has an `osm-mesh-config` in OSM's namespace. meshcp
reads it as the meshcp settings its fields mean (`read_osm_meshconfig`), so those take
effect without rewriting it. meshcp's own MeshConfig is the deliberate, newer choice: where
both set a setting, meshcp's wins, field by field, and the disagreement is reported naming
both objects; a setting only OSM's sets applies. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from meshcp.model.meshconfig import MeshConfig
from meshcp.model.meta import Meta, ObjectRef

OSM_CONFIG_GROUP = "config.openservicemesh.io"
#: The versions read: v1alpha2 (OSM 1.1 and later: what the API server stores) and
#: v1alpha3 (the same settings, as OSM's last API revision names them).
OSM_CONFIG_VERSIONS = (f"{OSM_CONFIG_GROUP}/v1alpha2", f"{OSM_CONFIG_GROUP}/v1alpha3")


@dataclass(frozen=True, slots=True)
class OsmMeshConfig:
    """One OSM MeshConfig: the meshcp settings it sets, and what meshcp cannot honour."""

    meta: Meta
    #: The meshcp settings its fields map to; `explicit` names those it set.
    settings: MeshConfig = field(default_factory=MeshConfig)
    #: MeshConfig attribute → the OSM field path that set it (for messages).
    sources: tuple[tuple[str, str], ...] = ()
    #: (field path, why it is ignored) for each field set that meshcp has no equivalent for.
    unsupported: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("MeshConfig", self.meta.namespace, self.meta.name)

    def source(self, attribute: str) -> str:
        """The OSM field path that set `attribute`."""
        return dict(self.sources).get(attribute, attribute)


def effective(own: tuple[MeshConfig, ...], osm: tuple[OsmMeshConfig, ...]) -> MeshConfig:
    """The settings the mesh runs with: meshcp's first MeshConfig (by name), each setting it
    does not set taken from OSM's first (by namespace, then name), the rest defaults."""
    if not osm:
        return own[0] if own else MeshConfig()
    taken = osm[0].settings
    if not own:
        return replace(taken, meta=osm[0].meta)
    mine = own[0]
    inherited = {name: getattr(taken, name) for name in taken.explicit if not mine.is_set(name)}
    return replace(mine, **inherited, explicit=mine.explicit | taken.explicit)


def problems(
    own: tuple[MeshConfig, ...], osm: tuple[OsmMeshConfig, ...], meshcp_field: dict[str, str]
) -> list[tuple[ObjectRef, str]]:
    """What to report about the OSM MeshConfigs: each field of the one used that meshcp
    does not support; each setting meshcp's MeshConfig overrides with another value
    (naming both objects); every other OSM MeshConfig, which is not used.
    `meshcp_field`: MeshConfig attribute → meshcp's field name."""
    if not osm:
        return []
    used, found = osm[0], []
    for path, why in used.unsupported:
        found.append((used.ref, f"{path}: not supported by meshcp, ignored ({why})"))
    if own:
        mine = own[0]
        for attribute in sorted(used.settings.explicit & mine.explicit):
            theirs, ours = getattr(used.settings, attribute), getattr(mine, attribute)
            if theirs == ours:
                continue
            name = meshcp_field.get(attribute, attribute)
            found.append(
                (
                    used.ref,
                    f"{used.source(attribute)}: {_show(theirs)} is overridden by {mine.ref} "
                    f"{name}: {_show(ours)} (meshcp's MeshConfig wins where both set a setting)",
                )
            )
    for other in osm[1:]:
        found.append(
            (other.ref, f"not used: {used.ref} is the OSM MeshConfig read (the first by namespace/name)")
        )
    return found


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)
