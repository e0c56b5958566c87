"""`model.locate`: the line of a field in a manifest file."""

from __future__ import annotations

import pytest

from meshcp.model.locate import field_line, path_of

TEXT = """\
# a comment
apiVersion: v1
kind: Service
metadata:
  name: web
  labels:
    meshcp.dev/proxy-uuid: x
spec:
  ports:
  - name: http
    port: 80
  - name: db
    port: 99999
---
apiVersion: v1
kind: List
items:
- kind: Pod
  metadata:
    name: a
- kind: Pod
  spec:
    serviceAccountName: b
"""


@pytest.mark.parametrize(
    ("document", "path", "line"),
    [
        (2, "spec.ports[1].port", 13),
        (2, "spec.ports[0]", 10),
        (2, "metadata.labels.meshcp.dev/proxy-uuid", 7),
        (2, "spec.ports[1].appProtocol", 12),  # absent: its port entry
        (2, "spec.selector", 8),  # absent: its parent
        (2, "", 2),
        (18, "metadata.name", 20),  # a List item
        (21, "spec.serviceAccountName", 23),
        (99, "spec", 99),  # no such document: where the caller said
    ],
)
def test_field_line(document: int, path: str, line: int) -> None:
    assert field_line(TEXT, document, path) == line


def test_field_line_of_text_that_is_not_yaml() -> None:
    assert field_line("a: [", 1, "a") == 1


@pytest.mark.parametrize(
    ("reason", "path"),
    [
        ("spec.ports[0].port: must be a port number", "spec.ports[0].port"),
        (
            "metadata.labels.kubernetes.io/service-name: required",
            "metadata.labels.kubernetes.io/service-name",
        ),
        ("unsupported kind Deployment (apps/v1)", ""),
        ("kind: required", "kind"),
    ],
)
def test_path_of(reason: str, path: str) -> None:
    assert path_of(reason) == path
