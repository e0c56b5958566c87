"""The proxyless gRPC classes of a round: the same policies, in gRPC's shape.

A class with a pod annotated `meshcp.dev/proxyless: grpc` gets, besides its sidecar
configuration, a second class keyed `grpc:<key>` compiled by `compile.proxyless`; a node
whose metadata says it is a proxyless gRPC node follows that one (`runtime.classify`).
Only such classes are compiled, so a mesh without proxyless pods pays nothing.

Each piece is memoised by the policy inputs it is made of, carried from round to round
(what a round did not use is dropped), and a class whose resources are the very objects
of the last round is handed on as the same object (the publisher skips it).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import partial

import betterproto2

from meshcp.cache.encoding import Encoder
from meshcp.cache.resource import Resource
from meshcp.compile import proxyless
from meshcp.model.state import MeshState
from meshcp.policy.types import Endpoint, ProxyPolicy, ServiceKey
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.sidecar.grpc_bootstrap import PROXYLESS_GRPC, PROXYLESS_KEY

#: Prefix of a proxyless class's key: `grpc:<sidecar class key>`.
CLASS_PREFIX = "grpc:"


def proxyless_key(key: str) -> str:
    return CLASS_PREFIX + key


def base_key(key: str) -> str | None:
    """The sidecar class a proxyless key is of (None: not a proxyless key)."""
    return key.removeprefix(CLASS_PREFIX) if key.startswith(CLASS_PREFIX) else None


def annotated_classes(state: MeshState, pod_classes: Mapping[tuple[str, str], str]) -> frozenset[str]:
    """The class keys of the pods annotated as proxyless gRPC."""
    return frozenset(
        key
        for pod in state.pods
        if pod.meta.annotations.get(PROXYLESS_KEY) == PROXYLESS_GRPC
        and (key := pod_classes.get((pod.meta.namespace, pod.meta.name))) is not None
    )


def pod_addresses(
    state: MeshState, pod_classes: Mapping[tuple[str, str], str], keys: frozenset[str]
) -> dict[str, tuple[str, ...]]:
    """The IPs of each proxyless class's annotated pods: a server bound to its pod's IP asks
    for the listener of that address. A walk over the pods, made only when the mesh has
    proxyless classes (also in endpoints-only rounds: a pod's IP is an endpoint change)."""
    found: dict[str, set[str]] = {}
    for pod in state.pods:
        if pod.ip and pod.meta.annotations.get(PROXYLESS_KEY) == PROXYLESS_GRPC:
            key = pod_classes.get((pod.meta.namespace, pod.meta.name))
            if key is not None and key in keys:
                found.setdefault(key, set()).add(pod.ip)
    return {key: tuple(sorted(ips)) for key, ips in found.items()}


class ProxylessCompiler:
    """Compiles the proxyless variants of the classes asked for, from a memo."""

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder
        self._memo: dict[Hashable, list[Resource]] = {}
        self._classes: dict[str, ProxyClass] = {}

    def classes(
        self,
        policies: Mapping[str, ProxyPolicy],
        endpoints: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]],
        keys: Iterable[str],
        addresses: Mapping[str, tuple[str, ...]] | None = None,
    ) -> list[ProxyClass]:
        """`addresses`: the IPs of each class's proxyless pods (`pod_addresses`)."""
        old, self._memo = self._memo, {}
        last, self._classes = self._classes, {}
        out = []
        for key in sorted(keys):
            policy = policies.get(key)
            if policy is None:
                continue
            ips = (addresses or {}).get(key, ())
            resources = tuple(self._resources(policy, endpoints, ips, old))
            found = last.get(proxyless_key(key))
            if (
                found is None
                or found.identity != policy.identity
                or len(found.resources) != len(resources)
                or any(a is not b for a, b in zip(found.resources, resources, strict=True))
            ):
                found = ProxyClass(proxyless_key(key), policy.identity, resources, ())
            self._classes[found.key] = found
            out.append(found)
        return out

    def _resources(
        self,
        policy: ProxyPolicy,
        endpoints: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]],
        ips: tuple[str, ...],
        old: dict[Hashable, list[Resource]],
    ) -> list[Resource]:
        trust, namespace = policy.trust_domain, policy.identity.namespace
        upstreams = policy.upstreams
        found: list[Resource] = []
        for spec in proxyless.cluster_specs(upstreams):
            found += self._piece(old, ("cds", spec, trust), partial(_one, proxyless.cluster, spec, trust))
            service, port = spec[0], spec[1]
            addresses = endpoints.get((service, port), ())
            found += self._piece(
                old,
                ("eds", service, port, addresses),
                partial(_one, proxyless.load_assignment, service, port, addresses),
            )
        denied = proxyless.denied_upstreams(policy)
        found += self._piece(
            old,
            ("lds", upstreams, namespace, denied),
            lambda: list(proxyless.client_listeners(upstreams, namespace, denied)),
        )
        found += self._piece(old, ("denied", bool(denied)), lambda: proxyless.denied_resources(denied))
        found += self._piece(old, ("rds", upstreams), lambda: list(proxyless.route_configurations(upstreams)))
        found += self._piece(
            old, ("srv", policy.inbound, trust, ips), lambda: list(proxyless.server_listeners(policy, ips))
        )
        return found

    def _piece(
        self,
        old: dict[Hashable, list[Resource]],
        key: Hashable,
        build: Callable[[], list[betterproto2.Message]],
    ) -> list[Resource]:
        found = self._memo.get(key)
        if found is None:
            found = old.get(key)
        if found is None:
            found = [self._encoder.encode(message) for message in build()]
        self._memo[key] = found
        return found


def _one(build: Callable[..., betterproto2.Message], *args: object) -> list[betterproto2.Message]:
    return [build(*args)]
