"""OSM's label and annotation names, read as aliases of meshcp's own.

A cluster moving from Open Service Mesh carries OSM's names on its namespaces and pods
(`openservicemesh.io/monitored-by`, `openservicemesh.io/sidecar-injection`, the exclusion
lists). meshcp reads each as the meshcp name it stands for, so those objects need no edit.
When one object carries both names with different values, meshcp's own wins (it is the
newer, deliberate choice) and the object is named in a warning: silently picking one would
hide a disagreement that someone wrote down. Pure: the controller's membership, the
injector's decision and the lab (through the injector) all ask here, so they agree.
"""

from __future__ import annotations

from collections.abc import Mapping

OSM_PREFIX = "openservicemesh.io/"
MESHCP_PREFIX = "meshcp.dev/"

#: The names OSM had too, after each mesh's prefix (`meshcp.dev/`, `openservicemesh.io/`).
ALIASED = (
    "monitored-by",
    "sidecar-injection",
    "outbound-port-exclusion-list",
    "inbound-port-exclusion-list",
    "outbound-ip-range-exclusion-list",
    "outbound-ip-range-inclusion-list",
)
#: meshcp's name → OSM's.
ALIASES: Mapping[str, str] = {MESHCP_PREFIX + part: OSM_PREFIX + part for part in ALIASED}


def osm_name(name: str) -> str | None:
    """OSM's name for meshcp's label or annotation `name` (None: OSM had none)."""
    return ALIASES.get(name)


def lookup(values: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """`name`'s (meshcp's) value in `values`, else its OSM alias's: (the name actually
    found, its value), so that a message can name what the user wrote. None: neither."""
    value = values.get(name)
    if value is not None:
        return name, value
    alias = ALIASES.get(name)
    if alias is not None and (value := values.get(alias)) is not None:
        return alias, value
    return None


def value_of(values: Mapping[str, str], name: str) -> str | None:
    """`name`'s value, else its OSM alias's (meshcp's wins when both are set)."""
    found = lookup(values, name)
    return None if found is None else found[1]


def conflicts(values: Mapping[str, str], names: tuple[str, ...] = tuple(ALIASES)) -> list[str]:
    """Why `values` (one object's labels or annotations) disagree with themselves: for each
    of meshcp's `names` also set under OSM's name to another value, one sentence saying
    which wins. Empty when they agree or only one is set."""
    found = []
    for name in names:
        alias = ALIASES.get(name)
        if alias is None or name not in values or alias not in values:
            continue
        if values[name] != values[alias]:
            found.append(
                f"{name}={values[name]!r} and OSM's {alias}={values[alias]!r} disagree: "
                f"meshcp's {name} is used"
            )
    return found
