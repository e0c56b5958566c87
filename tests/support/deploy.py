"""The install manifests in deploy/, loaded once, and lookups into them for the tests at
tests/test_deploy_*.py: an object by kind and name, a Deployment's one container, its
arguments as `meshcp` parses them, and the ports Services and probes point to.

The lookups keep the underscore names the tests are written with (`_find`, `_args`, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from meshcp.cli.parser import build_parser

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
NAMESPACE = "meshcp-system"

Manifest = dict[str, Any]


def _load() -> list[tuple[str, Manifest]]:
    documents = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return documents


DOCUMENTS = _load()


def _find(kind: str, name: str, *, file: str | None = None) -> Manifest:
    found = [
        doc
        for path, doc in DOCUMENTS
        if doc["kind"] == kind and doc["metadata"]["name"] == name and file in (None, path)
    ]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/, found {len(found)}"
    return found[0]


def _all(kind: str) -> list[Manifest]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def _container(deployment: Manifest) -> Manifest:
    containers: list[Manifest] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _args(deployment: Manifest) -> argparse.Namespace:
    """The container's arguments as `meshcp` parses them (the image's ENTRYPOINT is meshcp)."""
    container = _container(deployment)
    assert "command" not in container, "keep the image's ENTRYPOINT (meshcp); pass args only"
    args: list[str] = container["args"]
    return build_parser().parse_args(args)


def _container_port(deployment: Manifest, port: int | str) -> int:
    """A container port given by number or by name, as Services and probes refer to it."""
    ports: list[Manifest] = _container(deployment)["ports"]
    for entry in ports:
        if port in (entry["containerPort"], entry.get("name")):
            number: int = entry["containerPort"]
            return number
    raise AssertionError(f"{deployment['metadata']['name']} has no container port {port!r}")


def _service_target(service: Manifest, deployment: Manifest, name: str) -> tuple[int, int]:
    """(service port, container port) of the Service port `name`, which must select the
    Deployment's pods."""
    selector = service["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items(), f"Service {service['metadata']['name']} selects no pod"
    for entry in service["spec"]["ports"]:
        if entry["name"] == name:
            return entry["port"], _container_port(deployment, entry.get("targetPort", entry["port"]))
    raise AssertionError(f"Service {service['metadata']['name']} has no port {name}")


def _namespace(document: Manifest) -> str | None:
    namespace: str | None = document["metadata"].get("namespace")
    return namespace
