"""What a MeshConfig says that the running controller cannot do, reported on the MeshConfig.

Some of MeshConfig's fields describe how the controller was started rather than what it
may change while it runs. The CA (`certProvider`) is one: it comes with endpoints and
credentials that only the command line has (`--ca-provider`, `--cfssl-url`, `--vault-*`,
`--cert-manager-issuer`), and switching it would move every certificate to another root.
OSM chose it the same way, when it was installed (`--certificate-manager`), not in its
MeshConfig. So the controller keeps the CA it was started with, and a MeshConfig that
*sets* another one (a default is not a choice) is a problem on that MeshConfig: logged,
counted, posted as a Warning event and listed on /debug/problems. The rest of that
MeshConfig applies.
"""

from __future__ import annotations

from meshcp.model.meshconfig import MeshConfig
from meshcp.model.state import MeshObject, Problem


def conflicts(config: MeshConfig, *, ca_provider: str) -> list[str]:
    """Why `config` disagrees with how the controller was started (empty: it does not)."""
    found = []
    if config.is_set("cert_provider") and config.cert_provider != ca_provider:
        found.append(
            f"certProvider {config.cert_provider!r} is not the CA this controller was started with "
            f"({ca_provider!r}, --ca-provider): certificates keep coming from {ca_provider!r}; "
            f"start the controller with --ca-provider {config.cert_provider}, or remove certProvider"
        )
    return found


def mesh_config_problem(obj: MeshObject, *, ca_provider: str) -> Problem | None:
    """The problem of a MeshConfig that disagrees with the controller (None for the others)."""
    if not isinstance(obj, MeshConfig):
        return None
    found = conflicts(obj, ca_provider=ca_provider)
    return Problem(obj.ref, "; ".join(found)) if found else None
