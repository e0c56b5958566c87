"""From a MeshState to proxy classes: build policies, compile, encode once.

Every compiled piece is memoised by exactly the policy inputs it depends on, so a change
re-builds and re-encodes only what it touches: a moved endpoint re-encodes one
ClusterLoadAssignment, a new TrafficTarget the inbound config of one identity.

Nothing of a client's identity is compiled into what it receives of its upstreams: an
upstream cluster names the proxy's certificate and the trust bundle by names every proxy
shares (`naming.SERVICE_CERT`, `naming.ROOT_CERT`), so it is encoded once per service
port and the same object sits in every class that calls the service. What still grows
with the mesh squared is composed, not encoded: every client namespace has its outbound
routes over every service, filled into templates (`cache.encoding.Template`) from
virtual hosts encoded once; what all classes share (clusters, assignments) is gathered
once per round.

One module: the memo, the shared per-round pieces and the per-class compile are one
algorithm whose keys must agree with each other; split, they would only be read together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

import betterproto2

from meshcp.cache.encoding import Encoder, Template
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import ResourceSet
from meshcp.compile import cds, eds, lds, rds
from meshcp.model.state import MeshState, Problem
from meshcp.policy.build import MeshPolicy, build_policies, endpoints_moved
from meshcp.policy.build_memo import BuildMemo
from meshcp.policy.endpoint_change import EndpointChange, endpoint_change
from meshcp.policy.types import Endpoint, ProxyPolicy, ServiceKey, Upstream
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.proxyless import ProxylessCompiler, annotated_classes, pod_addresses
from meshcp.telemetry.metrics import Metrics

log = logging.getLogger("meshcp.runtime.reconcile")

T = TypeVar("T")


@dataclass
class _Memo:
    """Encoded resources by compile inputs; rebuilt each round so stale entries go."""

    entries: dict[Hashable, list[Resource]] = field(default_factory=dict)
    #: Interned `_Key`s: the same content gets the same key object round after round.
    keys: dict[_Key, _Key] = field(default_factory=dict)
    #: The `ResourceSet` of each piece (by the piece list's id, with the list kept alive).
    sets: dict[int, tuple[list[Resource], ResourceSet]] = field(default_factory=dict)
    #: By the upstreams key: what their clusters are compiled from, and its key.
    specs: dict[_Key, tuple[tuple[cds.UpstreamSpec, ...], _Key]] = field(default_factory=dict)
    hits: int = 0


class _Key:
    """A large policy value (every upstream of the mesh) as part of a memo key.

    Tuples do not keep their hash, and every class of a mesh shares its upstreams:
    hashing them per class makes a round O(classes x services). A `_Key` is hashed
    once, interned across rounds, and so compared by identity in the steady state.
    """

    __slots__ = ("_hash", "value")

    def __init__(self, value: Hashable) -> None:
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _Key) and self._hash == other._hash and self.value == other.value
        )


@dataclass
class _Hosts:
    """Encoded outbound virtual hosts (own namespace, others) by upstream, and the outbound
    route templates by port."""

    hosts: dict[Upstream, tuple[bytes, bytes]] = field(default_factory=dict)
    #: By (port, whether the 403 catch-all host is in it).
    templates: dict[tuple[int, bool], Template] = field(default_factory=dict)


@dataclass
class _Shared:
    """What every class with the same upstreams has in common, compiled once per round."""

    upstreams: _Key
    #: What the upstream clusters are compiled from (`cds.upstream_specs`), and its key.
    spec_list: tuple[cds.UpstreamSpec, ...]
    specs: _Key
    #: The encoded assignment of each (service, port) these upstreams reach, and all of
    #: them as one piece (replaced, not edited, by an endpoints-only change).
    assignments: dict[tuple[ServiceKey, int], Resource]
    endpoints: list[Resource]
    upstream_list: tuple[Upstream, ...]
    #: What the outbound listener matches (all mesh services when pruned), its key, the
    #: ports of its route configurations, and whether they end in the 403 catch-all.
    listener: _Key
    route_ports: tuple[int, ...]
    denied: bool
    #: Per HTTP port: the outbound route template and, per virtual host in order, the
    #: service's namespace and the host's bytes for clients in it and for all others.
    #: Built when some namespace's outbound routes must be encoded.
    route_hosts: list[tuple[Template, list[tuple[str, bytes, bytes]]]] | None = None
    #: What the listener was derived from (the policy's `listener_upstreams`): a group is
    #: taken over by the next round only if this is still the same object.
    listener_source: tuple[Upstream, ...] | None = None
    #: The memo entries this group used (`Reconciler._carry` takes them over with it).
    used: _Memo = field(default_factory=_Memo)


class Reconciler:
    """Applies each new MeshState; knows which class every connected proxy belongs to."""

    def __init__(
        self,
        encoder: Encoder,
        metrics: Metrics | None = None,
        on_problem: Callable[[Problem], None] | None = None,
        trust_domain: str | None = None,
    ) -> None:
        """`trust_domain`: the CA's, which every policy uses (`build_policies`)."""
        self._encoder = encoder
        self._trust_domain = trust_domain
        self._on_problem = on_problem
        self._metrics = metrics
        self._memo = _Memo()
        #: Kept while the outbound routes hit the memo (the round's memo would drop
        #: them), replaced by what was used when the routes are next rebuilt.
        self._hosts = _Hosts()
        self._hosts_used = _Hosts()
        self._policy = MeshPolicy({}, {}, {}, {})
        self._pods = BuildMemo()
        self._reported: set[Problem] = set()
        self.revision = -1
        #: The last state applied, its classes (in order) and the shared part of each.
        self._state: MeshState | None = None
        self._classes: list[ProxyClass] = []
        self._class_groups: list[_Shared] = []
        #: Built on the first endpoints-only change after a full round: which groups hold
        #: each (service, port)'s assignment, and which classes each group is part of.
        self._holders: dict[tuple[ServiceKey, int], list[_Shared]] | None = None
        self._members: dict[int, list[int]] | None = None
        #: The memo entries each class's compile used, and where a compile records them.
        self._class_used: dict[str, _Memo] = {}
        self._recorder: _Memo | None = None
        #: What the last `apply` recompiled: "endpoints" or "full".
        self.last_scope = ""
        #: The proxyless gRPC variants (`runtime.proxyless`), of the classes with pods
        #: annotated as proxyless (found on full rounds: an endpoint change keeps them).
        self._proxyless = ProxylessCompiler(encoder)
        self._proxyless_keys: frozenset[str] = frozenset()

    @property
    def policy(self) -> MeshPolicy:
        return self._policy

    @property
    def proxyless_keys(self) -> frozenset[str]:
        """The class keys compiled with a proxyless gRPC variant too."""
        return self._proxyless_keys

    def apply(self, state: MeshState) -> list[ProxyClass]:
        """Compile `state` into its proxy classes and report its problems."""
        classes = self.compile(state)
        self.report(state)
        return classes

    def report(self, state: MeshState) -> None:
        """Report the problems of `state` and of the policy last compiled from it: log
        lines, `on_problem` and the problems gauge. On the event loop: `on_problem` may
        queue work for it."""
        self._report(state.problems + self._policy.problems)

    def compile(self, state: MeshState) -> list[ProxyClass]:
        """Compile `state` into its proxy classes (the publisher installs them).

        A change that moves endpoints only (`policy.endpoint_change`) re-encodes the
        assignments it touches and replaces the endpoint pieces of the classes holding
        them: O(change). Any other change rebuilds the policy and re-derives every
        class from the memo: O(mesh) walks, but only what changed is encoded.

        Touches nothing but this reconciler, the encoder and the metrics, so a round may
        run it in a worker thread (`rounds.Rounds`) while the event loop serves streams."""
        change = None
        if self._state is not None:
            labels = self._pods.last_value("labels")
            change = endpoint_change(
                self._state, state, state.changes_since(self._state), self._policy, labels
            )
        if change is not None and self._state is not None:
            classes = self._apply_endpoints(change)
            policy = change.policy
            endpoints_moved(self._pods, state, policy)
        else:
            policy = build_policies(state, self._trust_domain, self._pods)
            classes = self._apply_policy(policy)
            self._proxyless_keys = annotated_classes(state, policy.pod_classes)
        if self._proxyless_keys:
            keys = self._proxyless_keys
            addresses = pod_addresses(state, policy.pod_classes, keys)
            classes = [*classes, *self._proxyless.classes(policy.classes, policy.endpoints, keys, addresses)]
        self._policy = policy
        self._state = state
        self.revision = state.revision
        self.last_scope = "full" if change is None else "endpoints"
        if self._metrics is not None:
            self._metrics.compiles.labels(self.last_scope).inc()
        log.debug(
            "revision %d: %d classes (%s), %d pieces reused, %d encodes so far",
            state.revision,
            len(classes),
            "endpoints only" if change is not None else "full",
            self._memo.hits,
            self._encoder.encodes,
        )
        return classes

    def _apply_policy(self, policy: MeshPolicy) -> list[ProxyClass]:
        """Every class of `policy`. A class whose policy is the very object of the last
        round (`BuildMemo` hands unchanged ones on as such) and whose group of upstreams
        is unchanged, endpoints included, is taken over as it was, with the memo entries
        it used; the others are compiled from the memo."""
        old, self._memo = self._memo, _Memo()
        last_classes = {c.key: (c, g) for c, g in zip(self._classes, self._class_groups, strict=True)}
        last_groups = {id(g.upstream_list): g for g in self._class_groups}
        last_policies = self._policy.classes
        moved = _moved_endpoints(self._policy.endpoints, policy.endpoints)
        shared: dict[int, _Shared] = {}  # by id(): the classes of a round share one tuple
        listeners: dict[int, tuple[_Key, tuple[int, ...]]] = {}  # likewise, with pruning
        #: Each (service, port)'s assignment, looked up once per round for all groups
        #: (its key hashes the endpoints).
        assignments: dict[tuple[ServiceKey, int], Resource] = {}
        classes = []
        groups = []
        class_used: dict[str, _Memo] = {}
        for key, class_policy in sorted(policy.classes.items()):
            common = shared.get(id(class_policy.upstreams))
            if common is None:
                common = last_groups.get(id(class_policy.upstreams))
                if common is not None and _still(common, class_policy, moved):
                    self._carry(common.used)
                    assignments.update(common.assignments)
                else:
                    used = _Memo()
                    common = self._record(
                        partial(self._new_group, class_policy, policy.endpoints, old, assignments, listeners),
                        used,
                    )
                    common.used = used
                shared[id(class_policy.upstreams)] = common
            last = last_classes.get(key)
            if last is not None and last[1] is common and last_policies.get(key) is class_policy:
                proxy_class, used = last[0], self._class_used[key]
                self._carry(used)
            else:
                used = _Memo()
                proxy_class = self._record(partial(self._compile, key, class_policy, common, old), used)
            classes.append(proxy_class)
            groups.append(common)
            class_used[key] = used
        if self._hosts_used.templates:
            self._hosts, self._hosts_used = self._hosts_used, _Hosts()
        self._classes, self._class_groups, self._class_used = classes, groups, class_used
        self._holders = self._members = None
        return classes

    def _record(self, build: Callable[[], T], into: _Memo) -> T:
        """Run `build`, noting the memo entries it uses in `into`."""
        self._recorder = into
        try:
            return build()
        finally:
            self._recorder = None

    def _carry(self, used: _Memo) -> None:
        """Take the memo entries a class or group used over into this round's memo (dict
        merges reuse the stored hashes: no key is hashed again)."""
        memo = self._memo
        memo.entries.update(used.entries)
        memo.sets.update(used.sets)
        memo.specs.update(used.specs)
        memo.keys.update(used.keys)

    def _new_group(
        self,
        policy: ProxyPolicy,
        endpoints: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]],
        old: _Memo,
        known: dict[tuple[ServiceKey, int], Resource],
        listeners: dict[int, tuple[_Key, tuple[int, ...]]],
    ) -> _Shared:
        group = self._shared(
            policy.upstreams, endpoints, old, known, self._listener(policy.listener_upstreams, listeners, old)
        )
        group.listener_source = policy.listener_upstreams
        return group

    def _apply_endpoints(self, change: EndpointChange) -> list[ProxyClass]:
        """Re-encode the changed assignments and swap them into the groups and classes
        that hold them; every other class is returned as the same object as before."""
        memo, none = self._memo, _Memo()
        before, after = self._policy.endpoints, change.policy.endpoints
        fresh: dict[tuple[ServiceKey, int], Resource] = {}
        holders, members = self._indexes()
        for service, port in sorted(change.changed, key=lambda k: (k[0].namespace, k[0].name, k[1])):
            if (service, port) not in holders:
                continue  # no class reaches it: nothing to encode
            stale = ("eds", service, port, before.get((service, port), ()))
            memo.entries.pop(stale, None)
            found = after.get((service, port), ())
            piece = self._piece(
                none, ("eds", service, port, found), self._encoded(partial(_assignment, service, port, found))
            )
            (fresh[(service, port)],) = piece
            for group in holders[(service, port)]:
                group.used.entries.pop(stale, None)
                group.used.entries[("eds", service, port, found)] = piece
        touched = {id(group): group for key in fresh for group in holders[key]}
        classes = list(self._classes)
        for group in touched.values():
            stale_set = id(group.endpoints)
            for held in (memo, group.used):
                held.entries.pop(("eds-all", tuple(group.endpoints)), None)
                held.sets.pop(stale_set, None)
            group.assignments = {key: fresh.get(key, value) for key, value in group.assignments.items()}
            values = list(group.assignments.values())
            group.endpoints, endpoints = self._record(
                partial(self._group_endpoints, values, none), group.used
            )
            for index in members[id(group)]:
                proxy_class = classes[index]
                classes[index] = replace(proxy_class, sets=(*proxy_class.sets[:-1], endpoints))
                # what the class carries to the next full round: its new endpoints set
                used = self._class_used[proxy_class.key].sets
                used.pop(stale_set, None)
                used[id(group.endpoints)] = (group.endpoints, endpoints)
        self._classes = classes
        return classes

    def _group_endpoints(self, values: list[Resource], none: _Memo) -> tuple[list[Resource], ResourceSet]:
        piece = self._piece(none, ("eds-all", tuple(values)), partial(list, values))
        return piece, self._set(piece, none)

    def _indexes(self) -> tuple[dict[tuple[ServiceKey, int], list[_Shared]], dict[int, list[int]]]:
        """Which groups hold each assignment, and each group's classes (by position)."""
        if self._holders is None or self._members is None:
            holders: dict[tuple[ServiceKey, int], list[_Shared]] = {}
            members: dict[int, list[int]] = {}
            for index, group in enumerate(self._class_groups):
                found = members.get(id(group))
                if found is None:
                    found = members[id(group)] = []
                    for key in group.assignments:
                        holders.setdefault(key, []).append(group)
                found.append(index)
            self._holders, self._members = holders, members
        return self._holders, self._members

    def forget(self) -> None:
        """Drop every compiled piece: the next `apply` compiles and encodes everything
        (the baseline benchmarks/compile_scale.py compares against)."""
        self._memo = _Memo()
        self._hosts = _Hosts()
        self._state = None

    def _key(self, old: _Memo, value: Hashable) -> _Key:
        key = _Key(value)
        found = self._memo.keys.get(key) or old.keys.get(key) or key
        self._memo.keys[found] = found
        if self._recorder is not None:
            self._recorder.keys[found] = found
        return found

    def _piece(self, old: _Memo, key: Hashable, build: Callable[[], list[Resource]]) -> list[Resource]:
        """A piece from this round, else from the last one, else built and encoded now."""
        found = self._memo.entries.get(key)
        if found is None:
            found = old.entries.get(key)
        if found is None:
            found = build()
        else:
            self._memo.hits += 1
        self._memo.entries[key] = found
        if self._recorder is not None:
            self._recorder.entries[key] = found
        return found

    def _encoded(self, build: Callable[[], list[betterproto2.Message]]) -> Callable[[], list[Resource]]:
        return lambda: [self._encoder.encode(message) for message in build()]

    def _shared(
        self,
        upstreams: tuple[Upstream, ...],
        endpoints: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]],
        old: _Memo,
        known: dict[tuple[ServiceKey, int], Resource],
        listener: tuple[_Key, tuple[int, ...]] | None = None,
    ) -> _Shared:
        """`known`: the round's assignments so far, by (service, port)."""
        assignments: dict[tuple[ServiceKey, int], Resource] = {}
        for upstream in upstreams:
            services = [upstream.service]
            if upstream.split is not None:
                services += [backend for backend, _ in upstream.split.backends]
            for service in services:
                key = (service, upstream.port)
                if key in assignments:
                    continue
                found = known.get(key)
                if found is None:
                    addresses = endpoints.get(key, ())
                    (found,) = self._piece(
                        old,
                        ("eds", service, upstream.port, addresses),
                        self._encoded(partial(_assignment, service, upstream.port, addresses)),
                    )
                    known[key] = found
                assignments[key] = found
        upstreams_key = self._key(old, upstreams)
        # Derived from the upstreams alone: unchanged upstreams (most rounds) skip the
        # walk over every service and the hashing of the result.
        specs = self._memo.specs.get(upstreams_key) or old.specs.get(upstreams_key)
        if specs is None:
            spec_list = cds.upstream_specs(upstreams)
            specs = (spec_list, self._key(old, spec_list))
        self._memo.specs[upstreams_key] = specs
        self._memo.keys[specs[1]] = specs[1]  # still interned if other upstreams give them
        if self._recorder is not None:
            self._recorder.specs[upstreams_key] = specs
            self._recorder.keys[specs[1]] = specs[1]
        # The same objects as last round when nothing changed: the publisher and the
        # snapshots then recognise them by identity instead of comparing their contents.
        values = list(assignments.values())
        all_endpoints = self._piece(old, ("eds-all", tuple(values)), lambda: values)
        listener_key, route_ports = (
            (upstreams_key, rds.route_ports(upstreams)) if listener is None else listener
        )
        return _Shared(
            upstreams_key,
            *specs,
            assignments,
            all_endpoints,
            upstreams,
            listener_key,
            route_ports,
            listener is not None,
        )

    def _listener(
        self,
        matched: tuple[Upstream, ...] | None,
        round_cache: dict[int, tuple[_Key, tuple[int, ...]]],
        old: _Memo,
    ) -> tuple[_Key, tuple[int, ...]] | None:
        """With pruning, what the listener matches (every mesh service) is one tuple for
        all classes: key it and find its route ports once per round, not per class."""
        if matched is None:
            return None
        found = round_cache.get(id(matched))
        if found is None:
            found = round_cache[id(matched)] = (self._key(old, matched), rds.route_ports(matched))
        return found

    def _route_hosts(
        self, shared: _Shared, old: _Memo
    ) -> list[tuple[Template, list[tuple[str, bytes, bytes]]]]:
        if shared.route_hosts is not None:
            return shared.route_hosts
        out = []
        by_port = dict(rds.outbound_ports(shared.upstream_list))
        for port in shared.route_ports:
            upstreams = by_port.get(port, [])
            kind = (port, shared.denied)
            template = self._hosts_used.templates.get(kind) or self._hosts.templates.get(kind)
            if template is None:
                template = self._encoder.template(*rds.outbound_route_template(port, shared.denied))
            self._hosts_used.templates[kind] = template
            hosts = []
            for upstream in upstreams:
                found = self._hosts_used.hosts.get(upstream) or self._hosts.hosts.get(upstream)
                if found is None:
                    own, other = rds.outbound_host_variants(upstream)
                    found = (self._encoder.fragment(own), self._encoder.fragment(other))
                self._hosts_used.hosts[upstream] = found
                hosts.append((upstream.service.namespace, template.field(found[0]), template.field(found[1])))
            out.append((template, hosts))
        shared.route_hosts = out
        return out

    def _outbound_routes(self, namespace: str, shared: _Shared, old: _Memo) -> list[Resource]:
        """A client namespace's outbound routes, filled from the shared virtual hosts."""
        return [
            self._encoder.fill(
                template,
                b"".join(own if ns == namespace else other for ns, own, other in hosts),
                intern=True,  # one port's change leaves the others' objects as they were
            )
            for template, hosts in self._route_hosts(shared, old)
        ]

    def _upstream_clusters(self, shared: _Shared, trust_domain: str, old: _Memo) -> list[Resource]:
        """Every upstream cluster of the classes with these upstreams: each encoded once
        per service port (and server identities), whoever its clients are.

        The list is memoised as a whole (a class looks up one key, not one per service);
        taken over from last round, it carries its clusters' own entries along, which
        the round's memo would otherwise drop: other upstreams that include them later
        (a new TrafficTarget source, a new service) find them instead of encoding again."""
        key = ("cds-up", shared.specs, trust_domain)
        found = self._memo.entries.get(key)
        if found is not None:
            self._memo.hits += 1
            if self._recorder is not None:
                self._recorder.entries[key] = found
            return found
        found = old.entries.get(key)
        if found is not None:
            self._memo.hits += 1
            for spec, cluster in zip(shared.spec_list, found, strict=True):
                single = self._memo.entries.setdefault(("cds", spec, trust_domain), [cluster])
                if self._recorder is not None:
                    self._recorder.entries[("cds", spec, trust_domain)] = single
        else:
            found = [
                self._piece(
                    old, ("cds", spec, trust_domain), self._encoded(partial(_cluster, spec, trust_domain))
                )[0]
                for spec in shared.spec_list
            ]
        self._memo.entries[key] = found
        if self._recorder is not None:
            self._recorder.entries[key] = found
        return found

    def _compile(self, key: str, policy: ProxyPolicy, shared: _Shared, old: _Memo) -> ProxyClass:
        identity, inbound = policy.identity, policy.inbound
        egress, trust = policy.egress_passthrough, policy.trust_domain
        encoded = self._encoded
        pieces: list[list[Resource]] = []
        pieces.append(self._upstream_clusters(shared, trust, old))
        pieces.append(
            self._piece(
                old,
                ("cds-local", cds.local_inputs(policy), cds.needs_passthrough(policy)),
                encoded(lambda: list(cds.local_clusters(policy))),
            )
        )
        pieces.append(
            self._piece(
                old,
                # the class's OSM Egress rules: identity-free, so classes allowed the same share it
                ("lds-out", shared.listener, egress, policy.egress),
                encoded(lambda: [lds.outbound_listener(policy)]),
            )
        )
        pieces.append(self._piece(old, ("lds-prom",), encoded(lambda: [lds.prometheus_listener()])))
        if inbound:
            pieces.append(
                self._piece(
                    old,
                    # the same secret names for every identity; OSM IngressBackends' rules
                    ("lds-in", inbound, trust, policy.ingress),
                    encoded(lambda: [lds.inbound_listener(policy)]),
                )
            )
        pieces.append(
            self._piece(
                old,
                ("rds-out", identity.namespace, shared.upstreams, shared.route_ports, shared.denied),
                partial(self._outbound_routes, identity.namespace, shared, old),
            )
        )
        pieces.append(
            self._piece(old, ("rds-in", inbound, trust), encoded(lambda: list(rds.inbound_routes(policy))))
        )
        # Names are unique by construction: clusters per spec (deduplicated by name),
        # local ones with `|local`, assignments per (service, port), one listener each.
        pieces.append(shared.endpoints)
        return ProxyClass(key, identity, (), tuple(self._set(p, old) for p in pieces))

    def _set(self, piece: list[Resource], old: _Memo) -> ResourceSet:
        """The shared `ResourceSet` of a piece, made once for as long as the piece lives."""
        found = self._memo.sets.get(id(piece)) or old.sets.get(id(piece))
        if found is None or found[0] is not piece:
            found = (piece, ResourceSet(piece))
        self._memo.sets[id(piece)] = found
        if self._recorder is not None:
            self._recorder.sets[id(piece)] = found
        return found[1]

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


def _cluster(spec: cds.UpstreamSpec, trust_domain: str) -> list[betterproto2.Message]:
    return [cds.cluster_of(spec, trust_domain)]


def _moved_endpoints(
    before: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]],
    after: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]],
) -> set[tuple[ServiceKey, int]]:
    """The (service, port)s whose endpoints are not the very tuple of the last round
    (`BuildMemo` hands equal ones on as the same object)."""
    moved = {key for key, found in after.items() if before.get(key) is not found}
    moved.update(key for key in before if key not in after)
    return moved


def _still(group: _Shared, policy: ProxyPolicy, moved: set[tuple[ServiceKey, int]]) -> bool:
    """Whether last round's `group` still holds for `policy`: the same upstream and
    listener tuples (objects), and none of its assignments moved."""
    return (
        group.upstream_list is policy.upstreams
        and group.listener_source is policy.listener_upstreams
        and not any(key in group.assignments for key in moved)
    )
