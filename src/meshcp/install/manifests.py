"""The chart's default render as shipped in the package, and the values `meshcp install
--set` (and the release namespace `-n`) may change in it.

Why not render the chart's templates: they are Go templates, and meshcp must not need helm
(or a Go template engine) at run time. The values `--set` takes are few and each lands in
known fields, so each is a small pure change of the rendered objects; tests/test_install.py
checks every one against `helm template --set` with the same value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

Manifest = dict[str, Any]

#: The namespace the shipped render is for (scripts/render-deploy's release namespace).
NAMESPACE = "meshcp-system"
#: The labels that put a namespace in the mesh: meshcp's and OSM's alias.
MESH_LABELS = ("meshcp.dev/monitored-by", "openservicemesh.io/monitored-by")
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: The release namespace as one whole name inside a string: `meshcp-system`,
#: `meshcp-system/meshcp-ca`, `meshcp-controller.meshcp-system.svc`, never part of a longer name.
_NAMESPACE_TOKEN = re.compile(rf"(?<![-a-z0-9]){re.escape(NAMESPACE)}(?![-a-z0-9])")


class ValuesError(Exception):
    """A `--set` that names no value `install` takes, or a bad value: one line."""


def default_manifests() -> list[Manifest]:
    """Every object of the chart's default render, in Helm's install order."""
    text = resources.files(__package__).joinpath("manifests.yaml").read_text(encoding="utf-8")
    return [document for document in yaml.safe_load_all(text) if document]


def _find(documents: list[Manifest], kind: str, name: str) -> Manifest:
    for document in documents:
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise ValuesError(f"the packaged manifests have no {kind} {name}")


def _containers(documents: list[Manifest]) -> list[Manifest]:
    return [
        container
        for name in ("meshcp-controller", "meshcp-injector")
        for container in _find(documents, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    ]


def _set_arg(documents: list[Manifest], flag: str, value: str) -> None:
    for container in _containers(documents):
        container["args"] = [
            f"{flag}={value}" if arg.startswith(f"{flag}=") else arg for arg in container["args"]
        ]


def _mesh_config(documents: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = _find(documents, "MeshConfig", "meshcp")["spec"]
    return spec


def _boolean(key: str, text: str) -> bool:
    if text not in ("true", "false"):
        raise ValuesError(f"--set {key}={text}: must be true or false")
    return text == "true"


def _replicas(key: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValuesError(f"--set {key}={text}: must be a whole number of at least 1")
    return int(text)


def _set_mesh_name(documents: list[Manifest], key: str, text: str) -> None:
    if not _NAME.match(text) or len(text) > 63:
        raise ValuesError(f"--set {key}={text}: must be a DNS label (it is a label value)")
    _mesh_config(documents)["meshName"] = text
    _set_arg(documents, "--mesh-name", text)
    policy = _find(documents, "NetworkPolicy", "meshcp-controller")
    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from", []):
            labels = peer.get("namespaceSelector", {}).get("matchLabels", {})
            for label in MESH_LABELS:
                if label in labels:
                    labels[label] = text


def _set_trust_domain(documents: list[Manifest], key: str, text: str) -> None:
    if not text or any(c in text for c in "/: "):
        raise ValuesError(f"--set {key}={text}: must be a trust domain such as cluster.local")
    _mesh_config(documents)["trustDomain"] = text
    _set_arg(documents, "--trust-domain", text)


def _set_cert_validity(documents: list[Manifest], key: str, text: str) -> None:
    if not _DURATION.match(text):
        raise ValuesError(f"--set {key}={text}: must be a duration such as 24h or 90m")
    _mesh_config(documents)["certValidity"] = text
    _set_arg(documents, "--cert-validity", text)


def _set_image(part: int) -> Callable[[list[Manifest], str, str], None]:
    def change(documents: list[Manifest], key: str, text: str) -> None:
        if not text or any(c.isspace() for c in text):
            raise ValuesError(f"--set {key}={text}: must not be empty or hold spaces")
        for container in _containers(documents):
            repository, _, tag = container["image"].rpartition(":")
            pieces = [repository, tag]
            pieces[part] = text
            container["image"] = ":".join(pieces)

    return change


def _set_replicas(deployment: str) -> Callable[[list[Manifest], str, str], None]:
    def change(documents: list[Manifest], key: str, text: str) -> None:
        _find(documents, "Deployment", deployment)["spec"]["replicas"] = _replicas(key, text)

    return change


def _set_flag(field: str) -> Callable[[list[Manifest], str, str], None]:
    def change(documents: list[Manifest], key: str, text: str) -> None:
        _mesh_config(documents)[field] = _boolean(key, text)

    return change


#: The chart's values `install --set` takes, and how each changes the default render.
VALUES: dict[str, Callable[[list[Manifest], str, str], None]] = {
    "meshName": _set_mesh_name,
    "trustDomain": _set_trust_domain,
    "permissive": _set_flag("permissive"),
    "egress": _set_flag("egressPassthrough"),
    "certValidity": _set_cert_validity,
    "image.repository": _set_image(0),
    "image.tag": _set_image(1),
    "controller.replicas": _set_replicas("meshcp-controller"),
    "injector.replicas": _set_replicas("meshcp-injector"),
}


@dataclass(frozen=True, slots=True)
class Setting:
    """One `--set KEY=VALUE`."""

    key: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Setting:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise ValuesError(f"--set {text}: expected KEY=VALUE")
        if key not in VALUES:
            raise ValuesError(f"--set {key}: install takes {', '.join(VALUES)} (helm takes every value)")
        return cls(key, value)


def _moved(value: Any, namespace: str) -> Any:
    if isinstance(value, str):
        return _NAMESPACE_TOKEN.sub(namespace, value)
    if isinstance(value, list):
        return [_moved(item, namespace) for item in value]
    if isinstance(value, dict):
        return {key: _moved(item, namespace) for key, item in value.items()}
    return value


def in_namespace(documents: list[Manifest], namespace: str) -> list[Manifest]:
    """`documents` released into `namespace` instead of meshcp-system, as `helm template -n`.

    Why every string and not a list of fields: `.Release.Namespace` lands in metadata, args
    (--xds-name, --ca-secret, --leader-lease, --xds-address), RBAC subjects, the webhook's
    Service and namespaceSelector, cert-manager's dnsNames and inject-ca-from, the APIService;
    a list would silently miss the next template that uses it. Nothing else in the render holds
    the name meshcp-system (tests/test_install.py compares with `helm template -n`).
    """
    if not _NAME.match(namespace) or len(namespace) > 63:
        raise ValuesError(f"namespace {namespace!r}: must be a DNS label such as meshcp-system")
    return [_moved(document, namespace) for document in documents]


def render(settings: list[Setting], namespace: str = NAMESPACE) -> list[Manifest]:
    """The default render in `namespace` with `settings` applied in order (a later one wins)."""
    documents = in_namespace(default_manifests(), namespace)
    for setting in settings:
        VALUES[setting.key](documents, setting.key, setting.value)
    return documents
