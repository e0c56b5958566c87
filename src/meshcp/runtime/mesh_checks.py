"""What a MeshConfig says that the running controller cannot do, reported on the MeshConfig.

Some of MeshConfig's fields describe how the controller was started rather than what it
may change while it runs. The CA (`certProvider`) is one: it comes with endpoints and
credentials that only the command line has (`--ca-provider`, `--cfssl-url`, `--vault-*`,
`--cert-manager-issuer`), and switching it would move every certificate to another root.
OSM chose it the same way, when it was installed (`--certificate-manager`), not in its
MeshConfig. So the controller keeps the CA it was started with, and a MeshConfig that
*sets* another one (a default is not a choice) is a problem on that MeshConfig: logged,
counted, posted as a Warning event and listed on /debug/problems. The rest of that
MeshConfig applies. The mesh's name (`meshName`) is another, when the controller was
started with `--mesh-name`: the Kubernetes source chose the mesh's namespaces by it, so
it stays, and a MeshConfig naming another mesh is reported the same way.
"""

from __future__ import annotations

from meshcp.model.meshconfig import MeshConfig
from meshcp.model.state import MeshObject, Problem


def conflicts(config: MeshConfig, *, ca_provider: str, mesh_name: str | None = None) -> list[str]:
    """Why `config` disagrees with how the controller was started (empty: it does not).
    `mesh_name`: the controller's `--mesh-name` (None: none given, MeshConfig's applies)."""
    found = []
    if mesh_name is not None and config.is_set("mesh_name") and config.mesh_name != mesh_name:
        found.append(
            f"meshName {config.mesh_name!r} is not the mesh this controller was started with "
            f"({mesh_name!r}, --mesh-name): namespaces monitored by {mesh_name!r} stay the mesh; "
            f"start the controller with --mesh-name {config.mesh_name}, or remove meshName"
        )
    if config.is_set("cert_provider") and config.cert_provider != ca_provider:
        found.append(
            f"certProvider {config.cert_provider!r} is not the CA this controller was started with "
            f"({ca_provider!r}, --ca-provider): certificates keep coming from {ca_provider!r}; "
            f"start the controller with --ca-provider {config.cert_provider}, or remove certProvider"
        )
    return found


def mesh_config_problem(obj: MeshObject, *, ca_provider: str, mesh_name: str | None = None) -> Problem | None:
    """The problem of a MeshConfig that disagrees with the controller (None for the others)."""
    if not isinstance(obj, MeshConfig):
        return None
    found = conflicts(obj, ca_provider=ca_provider, mesh_name=mesh_name)
    return Problem(obj.ref, "; ".join(found)) if found else None
