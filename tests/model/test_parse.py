"""Reading a manifest's envelope: kind, apiVersion and metadata, whatever the kind."""

from __future__ import annotations

import re

import pytest

from meshcp.model.core import Namespace, ServiceAccount
from meshcp.model.meta import Meta, ObjectRef
from meshcp.model.parse import InvalidObject, parse_object, ref_of
from tests.model.manifests import CONFIG, Invalid, Valid, manifest, reading_tests, split, with_labels

VALID: Valid = [
    (
        "namespace is cluster-scoped",
        manifest("v1", "Namespace", "shop", "ignored"),
        Namespace(Meta("shop")),
    ),
    (
        "service account defaults to namespace default",
        manifest("v1", "ServiceAccount", "web", None),
        ServiceAccount(Meta("web", "default")),
    ),
]

INVALID: Invalid = [
    ("not a mapping", ["a", "list"], "a manifest must be a mapping, got a list"),
    ("no kind", {"apiVersion": "v1", "metadata": {"name": "x"}}, "kind: required"),
    ("no apiVersion", {"kind": "Service", "metadata": {"name": "x"}}, "apiVersion: required"),
    ("unknown kind", manifest("apps/v1", "Deployment"), "unsupported kind Deployment (apps/v1)"),
    (
        "unknown version",
        split("split.smi-spec.io/v1alpha1"),
        "unsupported apiVersion split.smi-spec.io/v1alpha1",
    ),
    ("no name", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {}}, "metadata.name: required"),
    ("bad name", manifest("v1", "ServiceAccount", "Web_1"), "metadata.name: must be a DNS subdomain"),
    ("service name", manifest("v1", "Service", "1web"), "metadata.name: must be a DNS-1035 label"),
    ("namespace name", manifest("v1", "Namespace", "a.b", None), "metadata.name: must be a DNS label"),
    (
        "bad namespace",
        manifest("v1", "ServiceAccount", "a", "Shop"),
        "metadata.namespace: must be a DNS label",
    ),
    ("metadata a list", {"apiVersion": "v1", "kind": "Pod", "metadata": []}, "metadata: must be a mapping"),
    (
        "label not a string",
        with_labels(manifest("v1", "Pod", "p"), {"version": 1}),
        "metadata.labels.version: must be a string, got 1 (quote it to keep it text)",
    ),
]


test_valid, test_invalid = reading_tests(VALID, INVALID)


def test_invalid_object_names_the_object() -> None:
    with pytest.raises(InvalidObject, match=re.escape("Service shop/web: spec.ports[0].port: required")):
        parse_object(manifest("v1", "Service", "web", "shop", spec={"ports": [{}]}))


@pytest.mark.parametrize(
    ("value", "ref"),
    [
        (manifest("v1", "Service", "web", None), ObjectRef("Service", "default", "web")),
        (manifest("v1", "Namespace", "shop", "x"), ObjectRef("Namespace", "", "shop")),
        (manifest(CONFIG, "MeshConfig", "meshcp", "x"), ObjectRef("MeshConfig", "", "meshcp")),
        (manifest("apps/v1", "Deployment", "web", None), ObjectRef("Deployment", "", "web")),
        ({"kind": 3, "metadata": "x"}, ObjectRef("", "", "")),
        ("text", ObjectRef("", "", "")),
    ],
)
def test_ref_of(value: object, ref: ObjectRef) -> None:
    assert ref_of(value) == ref
