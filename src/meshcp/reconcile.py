"""From a MeshState to published snapshots: build policies, compile, encode, publish.

Every compiled piece is memoised by exactly the policy inputs it depends on, so a change
re-builds and re-encodes only what it touches: a moved endpoint re-encodes one
ClusterLoadAssignment, a new TrafficTarget the inbound config of one identity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import partial

import betterproto2

from meshcp.cache.encoding import Encoder
from meshcp.cache.resource import Resource
from meshcp.certs.identity import Identity, ProxyIdentity
from meshcp.compile import cds, eds, lds, rds
from meshcp.metrics import Metrics
from meshcp.model.state import MeshState, Problem
from meshcp.policy.build import MeshPolicy, build_policies
from meshcp.policy.types import Endpoint, ProxyPolicy, ServiceKey
from meshcp.publisher import ProxyClass, Publisher

log = logging.getLogger("meshcp.reconcile")


@dataclass
class _Memo:
    """Encoded resources by compile inputs; rebuilt each round so stale entries go."""

    entries: dict[Hashable, list[Resource]] = field(default_factory=dict)
    hits: int = 0


class Reconciler:
    """Applies each new MeshState; knows which class every connected proxy belongs to."""

    def __init__(
        self,
        encoder: Encoder,
        publisher: Publisher,
        metrics: Metrics | None = None,
        on_problem: Callable[[Problem], None] | None = None,
    ) -> None:
        self._encoder = encoder
        self._on_problem = on_problem
        self._publisher = publisher
        self._metrics = metrics
        self._memo = _Memo()
        self._policy = MeshPolicy({}, {}, {}, {})
        self._reported: set[Problem] = set()
        self.revision = -1

    @property
    def policy(self) -> MeshPolicy:
        return self._policy

    def classify(self, node_id: str, trust_domain: str = "cluster.local") -> str:
        """The class of a proxy from its node id (`<uuid>.sidecar.<sa>.<ns>.<td>`); unknown
        proxies get their node id (nothing is published for it, so they wait)."""
        try:
            proxy = ProxyIdentity.parse(node_id, trust_domain)
        except ValueError:
            return node_id
        pod = self._policy.proxies.get(proxy.proxy_uuid)
        if pod is None:
            return node_id
        return self._policy.pod_classes.get(pod, node_id)

    def apply(self, state: MeshState) -> list[ProxyClass]:
        """Compile `state` and publish it; returns the classes published."""
        policy = build_policies(state)
        self._report(state.problems + policy.problems)
        old, self._memo = self._memo, _Memo()
        classes = [self._compile(key, p, policy.endpoints, old) for key, p in sorted(policy.classes.items())]
        self._policy = policy
        self._publisher.update(classes)
        self.revision = state.revision
        log.debug(
            "revision %d: %d classes, %d pieces reused, %d encodes so far",
            state.revision,
            len(classes),
            self._memo.hits,
            self._encoder.encodes,
        )
        return classes

    def _piece(
        self, old: _Memo, key: Hashable, build: Callable[[], list[betterproto2.Message]]
    ) -> list[Resource]:
        """A piece from this round, else from the last one, else built and encoded now."""
        found = self._memo.entries.get(key)
        if found is None:
            found = old.entries.get(key)
        if found is None:
            found = [self._encoder.encode(message) for message in build()]
        else:
            self._memo.hits += 1
        self._memo.entries[key] = found
        return found

    def _compile(
        self,
        key: str,
        policy: ProxyPolicy,
        endpoints: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]],
        old: _Memo,
    ) -> ProxyClass:
        identity, upstreams, inbound = policy.identity, policy.upstreams, policy.inbound
        egress, trust = policy.egress_passthrough, policy.trust_domain
        resources: list[Resource] = []
        resources += self._piece(
            old,
            ("cds-up", identity, cds.upstream_inputs(policy)),
            lambda: list(cds.upstream_clusters(policy)),
        )
        resources += self._piece(
            old, ("cds-local", inbound, egress), lambda: list(cds.local_clusters(policy))
        )
        resources += self._piece(old, ("lds-out", upstreams, egress), lambda: [lds.outbound_listener(policy)])
        resources += self._piece(old, ("lds-prom",), lambda: [lds.prometheus_listener()])
        if inbound:
            resources += self._piece(
                old, ("lds-in", identity, inbound, trust), lambda: [lds.inbound_listener(policy)]
            )
        resources += self._piece(
            old, ("rds-out", identity.namespace, upstreams), lambda: list(rds.outbound_routes(policy))
        )
        resources += self._piece(old, ("rds-in", inbound, trust), lambda: list(rds.inbound_routes(policy)))
        peers: dict[tuple[str, str], tuple[Identity, ...]] = {}
        for upstream in upstreams:
            services = [upstream.service]
            if upstream.split is not None:
                services += [backend for backend, _ in upstream.split.backends]
            for service in services:
                found = endpoints.get((service, upstream.port), ())
                resources += self._piece(
                    old,
                    ("eds", service, upstream.port, found),
                    partial(_assignment, service, upstream.port, found),
                )
            peers[(upstream.service.namespace, upstream.service.name)] = upstream.identities
        unique = list({(r.type_url, r.name): r for r in resources}.values())
        return ProxyClass(key, identity, tuple(unique), peers)

    def _report(self, problems: tuple[Problem, ...]) -> None:
        current = set(problems)
        for problem in sorted(current - self._reported, key=str):
            log.warning("skipped: %s", problem)
            if self._on_problem is not None:
                self._on_problem(problem)
        for problem in sorted(self._reported - current, key=str):
            log.info("resolved: %s", problem)
        previous, self._reported = self._reported, current
        if self._metrics is not None:
            by_kind: dict[str, int] = {}
            for problem in current:
                by_kind[problem.ref.kind] = by_kind.get(problem.ref.kind, 0) + 1
            for kind in {problem.ref.kind for problem in previous} | by_kind.keys():
                self._metrics.problems.labels(kind).set(by_kind.get(kind, 0))


def _assignment(
    service: ServiceKey, port: int, endpoints: tuple[Endpoint, ...]
) -> list[betterproto2.Message]:
    return [eds.load_assignment(service, port, endpoints)]
