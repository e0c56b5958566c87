"""Manifests for the reader tests: one of each kind, valid, to change one field at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from meshcp.model.meta import Meta, frozen_map
from meshcp.model.parse import InvalidObject, parse_object, ref_of
from meshcp.model.state import MeshObject

ACCESS = "access.smi-spec.io/v1alpha3"
SPECS = "specs.smi-spec.io/v1alpha4"
SPLIT = "split.smi-spec.io/v1alpha4"
CONFIG = "config.meshcp.dev/v1alpha1"


def manifest(
    api_version: str, kind: str, name: str = "x", namespace: str | None = "ns", **body: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def meta(name: str = "x", namespace: str = "ns", **labels: str) -> Meta:
    return Meta(name=name, namespace=namespace, labels=frozen_map(labels))


def target(api_version: str = ACCESS, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destination": {"kind": "ServiceAccount", "name": "store", "namespace": "ns"},
        "sources": [{"kind": "ServiceAccount", "name": "buyer", "namespace": "buyers"}],
        "rules": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["buy"]}],
    }
    body.update(spec)
    return manifest(api_version, "TrafficTarget", spec=body)


def routes(api_version: str = SPECS, **match: Any) -> dict[str, Any]:
    return manifest(api_version, "HTTPRouteGroup", spec={"matches": [{"name": "m", **match}]})


def split(api_version: str = SPLIT, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": "apex",
        "backends": [{"service": "v1", "weight": 75}, {"service": "v2", "weight": 25}],
    }
    body.update(spec)
    return manifest(api_version, "TrafficSplit", spec=body)


def service(*ports: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return manifest("v1", "Service", spec={"ports": list(ports), **spec})


def mesh_config(**spec: Any) -> dict[str, Any]:
    return manifest(CONFIG, "MeshConfig", "meshcp", None, spec=spec)


POD = manifest(
    "v1",
    "Pod",
    "web-0",
    spec={
        "serviceAccountName": "web",
        "hostNetwork": True,
        "containers": [
            {"name": "a", "ports": [{"containerPort": 8080, "name": "http"}]},
            {"name": "b", "ports": [{"containerPort": 9090}]},
        ],
    },
    status={
        "podIP": "10.244.1.5",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
    },
)

SLICE = manifest(
    "discovery.k8s.io/v1",
    "EndpointSlice",
    "web-abc",
    addressType="IPv4",
    endpoints=[
        {"addresses": ["10.244.1.5"], "targetRef": {"kind": "Pod", "name": "web-0"}},
        {"addresses": ["10.244.1.6"], "conditions": {"ready": False}},
    ],
    ports=[{"name": "http", "port": 8080}],
)
SLICE["metadata"]["labels"] = {"kubernetes.io/service-name": "web"}


def with_labels(body: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    body["metadata"]["labels"] = labels
    return body


def slice_with(**changes: Any) -> dict[str, Any]:
    return {**SLICE, "metadata": dict(SLICE["metadata"]), **changes}


#: (test id, manifest, the object it reads as)
Valid = list[tuple[str, dict[str, Any], MeshObject]]
#: (test id, manifest, the start of (or a part of) the reason it is refused with)
Invalid = list[tuple[str, Any, str]]


def cases(table: Valid | Invalid) -> list[Any]:
    return [pytest.param(*case[1:], id=case[0]) for case in table]


def reading_tests(valid: Valid, invalid: Invalid) -> tuple[Callable[..., None], Callable[..., None]]:
    """`test_valid` and `test_invalid` over a kind's tables: each valid manifest reads as its
    object; each invalid one is refused, naming the object, with its reason."""

    @pytest.mark.parametrize(("manifest_", "expected"), cases(valid))
    def test_valid(manifest_: dict[str, Any], expected: MeshObject) -> None:
        assert parse_object(manifest_) == expected

    @pytest.mark.parametrize(("manifest_", "reason"), cases(invalid))
    def test_invalid(manifest_: Any, reason: str) -> None:
        assert_invalid(manifest_, reason)

    return test_valid, test_invalid


def assert_invalid(manifest_: Any, reason: str) -> None:
    with pytest.raises(InvalidObject) as raised:
        parse_object(manifest_)
    assert raised.value.reason.startswith(reason) or reason in raised.value.reason, raised.value.reason
    assert raised.value.ref == ref_of(manifest_)
