"""deploy/smi-crds.yaml: one CustomResourceDefinition per SMI kind the controller watches,
serving exactly the version it lists and watches (meshcp.sources.kubernetes.RESOURCES), with
the kind, plural and scope the source asks for. The API server checks the schemas
themselves (tests/kube/test_deploy.py, test_bookstore.py)."""

from __future__ import annotations

from meshcp.sources.kubernetes import RESOURCES
from tests.support.deploy import DOCUMENTS

SMI = [r for r in RESOURCES if r.group.endswith(".smi-spec.io")]


def test_every_watched_smi_kind_has_its_crd_at_the_watched_version() -> None:
    crds = {
        doc["metadata"]["name"]: doc
        for path, doc in DOCUMENTS
        if path == "smi-crds.yaml" and doc["kind"] == "CustomResourceDefinition"
    }
    assert set(crds) == {f"{r.plural}.{r.group}" for r in SMI}
    for resource in SMI:
        spec = crds[f"{resource.plural}.{resource.group}"]["spec"]
        assert spec["group"] == resource.group
        assert spec["names"]["kind"] == resource.kind
        assert spec["names"]["plural"] == resource.plural
        assert spec["scope"] == ("Namespaced" if resource.namespaced else "Cluster")
        served = [(v["name"], v["served"], v["storage"]) for v in spec["versions"]]
        assert served == [(resource.version, True, True)], resource.kind
