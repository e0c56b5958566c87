"""A small mesh described in code: bookstore-like objects for policy and compile tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshcp.model.core import Namespace, Pod, Service, ServicePort
from meshcp.model.meshconfig import MESH_LABEL, PERMISSIVE_ANNOTATION, MeshConfig
from meshcp.model.meta import Meta, frozen_map
from meshcp.model.smi import (
    HTTPMatch,
    HTTPRouteGroup,
    IdentitySubject,
    SplitBackend,
    SplitMatch,
    TargetRule,
    TCPRoute,
    TrafficSplit,
    TrafficTarget,
)
from meshcp.model.state import MeshObject, MeshState


def namespace(name: str, *, meshed: bool = True, permissive: str | None = None) -> Namespace:
    labels = {MESH_LABEL: "meshcp"} if meshed else {}
    annotations = {PERMISSIVE_ANNOTATION: permissive} if permissive is not None else {}
    return Namespace(Meta(name, labels=frozen_map(labels), annotations=frozen_map(annotations)))


def pod(ns: str, name: str, sa: str, ip: str, *, ready: bool = True, **labels: str) -> Pod:
    return Pod(Meta(name, ns, labels=frozen_map(labels or {"app": name})), sa, ip, ready)


def service(ns: str, name: str, ip: str, *ports: tuple[int, str], **selector: str) -> Service:
    return Service(
        Meta(name, ns),
        tuple(ServicePort(port, port, protocol) for port, protocol in ports),
        frozen_map(selector or {"app": name}),
        ip,
    )


def target(
    ns: str, name: str, dest_sa: str, sources: list[tuple[str, str]], *rules: TargetRule
) -> TrafficTarget:
    return TrafficTarget(
        Meta(name, ns),
        IdentitySubject(dest_sa, ns),
        tuple(IdentitySubject(sa, src_ns) for src_ns, sa in sources),
        rules,
    )


def routes(ns: str, name: str, *matches: HTTPMatch) -> HTTPRouteGroup:
    return HTTPRouteGroup(Meta(name, ns), matches)


def tcp(ns: str, name: str, *ports: int) -> TCPRoute:
    return TCPRoute(Meta(name, ns), ports)


def split(
    ns: str, name: str, apex: str, *backends: tuple[str, float], matches: tuple[SplitMatch, ...] = ()
) -> TrafficSplit:
    return TrafficSplit(Meta(name, ns), apex, tuple(SplitBackend(b, w) for b, w in backends), matches)


RULE_ALL = TargetRule("HTTPRouteGroup", "bookstore-routes")
RULE_BUY = TargetRule("HTTPRouteGroup", "bookstore-routes", ("buy-a-book",))
BUY = HTTPMatch("buy-a-book", "/buy", ("GET",))
STOCK = HTTPMatch("books-bought", "/books-bought", ("*",), frozen_map({"user-agent": ".*-http-client/.*"}))


@dataclass
class Bookstore:
    """bookbuyer and bookthief call bookstore (v1 and v2 behind an apex); bookwarehouse is TCP."""

    extra: list[MeshObject] = field(default_factory=list)
    permissive: bool = False
    #: MeshConfig `pruneUnreachableUpstreams` (on by default, as in a real MeshConfig).
    prune: bool = True

    def objects(self) -> list[MeshObject]:
        return [
            MeshConfig(permissive=self.permissive, prune_unreachable_upstreams=self.prune),
            namespace("bookstore"),
            namespace("bookbuyer"),
            namespace("bookthief"),
            namespace("outside", meshed=False),
            pod("bookbuyer", "bookbuyer", "bookbuyer", "10.244.1.1"),
            pod("bookthief", "bookthief", "bookthief", "10.244.1.2"),
            pod("bookstore", "bookstore-v1", "bookstore", "10.244.2.1", app="bookstore", version="v1"),
            pod("bookstore", "bookstore-v2", "bookstore", "10.244.2.2", app="bookstore", version="v2"),
            pod("bookstore", "warehouse", "warehouse", "10.244.3.1", app="warehouse"),
            pod("outside", "stranger", "default", "10.244.9.9", app="bookstore"),
            service("bookstore", "bookstore", "10.96.0.10", (14001, "http"), app="bookstore"),
            service(
                "bookstore", "bookstore-v1", "10.96.0.11", (14001, "http"), app="bookstore", version="v1"
            ),
            service(
                "bookstore", "bookstore-v2", "10.96.0.12", (14001, "http"), app="bookstore", version="v2"
            ),
            service("bookstore", "warehouse", "10.96.0.20", (5432, "tcp"), (8080, "http"), app="warehouse"),
            routes("bookstore", "bookstore-routes", BUY, STOCK),
            *self.extra,
        ]

    def state(self) -> MeshState:
        return MeshState().with_changes(self.objects())
