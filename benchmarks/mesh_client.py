"""Simulated Envoys for `mesh_scale.py`: one ADS stream per pod, subscribing as Envoy does.

Built on the raw HTTP/2 framing of `fanout_client.py` (no grpclib, no betterproto2 on the hot
path; `fanout_client.self_check` proves the shared framing), but unlike that client every
proxy has its own node (the pod's `<uuid>.sidecar.<sa>.<ns>.cluster.local` id and `<ns>/<sa>`
cluster, as `meshcp bootstrap` writes them; meshcp's bootstraps carry no node metadata) and
follows what it receives:

- CDS wildcard (first request, carrying the node);
- on clusters: EDS for the EDS clusters received (`eds_cluster_config.service_name` or the
  cluster name), SDS for the secrets the clusters reference;
- after the first EDS answer: LDS wildcard;
- on listeners: RDS for the route names in their HCMs, SDS for the secrets they reference;
- every response ACKed (SotW: version, current names of the type, nonce; delta: nonce);
  subscriptions follow later CDS/LDS changes (SotW: a new request with the new names;
  delta: subscribe/unsubscribe).

A proxy is converged when it has ACKed every type at least once and holds every EDS, RDS and
SDS name it subscribes to. The names inside a resource are read without decoding it: a
resource's name is its field 1, a cluster's type and EDS service name are top-level fields,
and the secret and route names are found as the length-delimited fields that carry them
(`SdsSecretConfig.name` = field 1 starting with a secret prefix, `Rds.route_config_name` =
field 2 starting with `rds-`). Results are cached per distinct resource bytes, so proxies
sharing a configuration cost one extraction. `self_check` proves the extraction against
betterproto2 on real meshcp-shaped resources.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from fanout_client import (
    DELTA_PATH,
    SOTW_PATH,
    ControlledLoad,
    H2Connection,
    node_field,
    raise_file_limit,
)

from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterEdsClusterConfig
from meshcp._proto.envoy.config.core.v3 import TransportSocket
from meshcp._proto.envoy.config.listener.v3 import Filter, FilterChain, Listener
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    Rds,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CommonTlsContext,
    DownstreamTlsContext,
    SdsSecretConfig,
    UpstreamTlsContext,
)
from meshcp._proto.google.protobuf import Any as AnyMessage
from meshcp.cache import resource_types
from meshcp.cache.wire import length_delimited, read_varint, varint

TYPES = (
    resource_types.CLUSTER,
    resource_types.ENDPOINT,
    resource_types.LISTENER,
    resource_types.ROUTE,
    resource_types.SECRET,
)
CDS, EDS, LDS, RDS, SDS = range(5)
ALL_TYPES = 0b11111
SHORT = ("cds", "eds", "lds", "rds", "sds")
_TYPE_INDEX = {url.encode(): index for index, url in enumerate(TYPES)}

_SECRET_REF = re.compile(rb"\x0a([\x01-\x7f])(?=(?:service-cert|root-cert-for-mtls-(?:inbound|outbound)):)")
_ROUTE_REF = re.compile(rb"\x12([\x01-\x7f])(?=rds-)")
_EDS_TYPE = 3  # Cluster.DiscoveryType.EDS


# --- protobuf scanning ----------------------------------------------------------------------


def fields(data: bytes, pos: int = 0, end: int = -1) -> Iterable[tuple[int, int, int, int]]:
    """(field number, wire type, start, end or varint value) of each top-level field."""
    if end < 0:
        end = len(data)
    while pos < end:
        tag, pos = read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = read_varint(data, pos)
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 0:
            value, pos = read_varint(data, pos)
            yield number, wire, pos, value
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unexpected wire type {wire}")


@dataclass(frozen=True, slots=True)
class Info:
    """What a proxy acts on in one resource."""

    name: str
    eds: str | None = None  # an EDS cluster's ClusterLoadAssignment name
    secrets: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


def _refs(pattern: re.Pattern[bytes], value: bytes) -> tuple[str, ...]:
    found = {value[m.end() : m.end() + m.group(1)[0]].decode() for m in pattern.finditer(value)}
    return tuple(sorted(found))


def extract(kind: int, value: bytes) -> Info:
    """The Info of one resource, `value` being the packed message (the Any's value)."""
    name = ""
    cluster_type = 0
    service_name = ""
    for number, wire, start, end in fields(value):
        if number == 1 and wire == 2:
            name = value[start:end].decode()
        elif kind == CDS and number == 2 and wire == 0:
            cluster_type = end
        elif kind == CDS and number == 3 and wire == 2:
            for sub, sub_wire, s, e in fields(value, start, end):
                if sub == 2 and sub_wire == 2:
                    service_name = value[s:e].decode()
    if kind == CDS:
        eds = (service_name or name) if cluster_type == _EDS_TYPE else None
        return Info(name, eds, _refs(_SECRET_REF, value))
    if kind == LDS:
        return Info(name, None, _refs(_SECRET_REF, value), _refs(_ROUTE_REF, value))
    return Info(name)


class InfoCache:
    """Info per distinct resource bytes (bounded: cleared when it grows past `limit`)."""

    def __init__(self, limit: int = 2_000_000) -> None:
        self._infos: dict[bytes, Info] = {}
        self._limit = limit
        self.extracted = 0

    def get(self, kind: int, key: bytes, value: bytes) -> Info:
        info = self._infos.get(key)
        if info is None:
            if len(self._infos) >= self._limit:
                self._infos.clear()
            info = self._infos[key] = extract(kind, value)
            self.extracted += 1
        return info


def _field(data: bytes, wanted: int) -> bytes:
    for number, wire, start, end in fields(data):
        if number == wanted and wire == 2:
            return data[start:end]
    return b""


@dataclass(slots=True)
class Response:
    version: bytes
    kind: int
    nonce: bytes
    infos: list[Info]
    removed: list[str]


def parse_response(data: bytes, pos: int, end: int, delta: bool, cache: InfoCache) -> Response:
    version = type_url = nonce = b""
    bodies: list[tuple[int, int]] = []
    removed: list[str] = []
    for number, wire, start, stop in fields(data, pos, end):
        if wire != 2:
            continue
        if number == 2:
            bodies.append((start, stop))
        elif number == 1:
            version = data[start:stop]
        elif number == 4:
            type_url = data[start:stop]
        elif number == 5:
            nonce = data[start:stop]
        elif number == 6 and delta:
            removed.append(data[start:stop].decode())
    kind = _TYPE_INDEX.get(type_url, -1)
    infos: list[Info] = []
    for start, stop in bodies:
        body = data[start:stop]
        # SotW: Any{type_url=1, value=2}; delta: Resource{version=1, resource=2 (Any), name=3}
        value = _field(_field(body, 2), 2) if delta else _field(body, 2)
        infos.append(cache.get(kind, body, value))
    return Response(version, kind, nonce, infos, removed)


# --- requests -------------------------------------------------------------------------------


class Requests:
    """Request bytes, with the name lists framed once per distinct subscription."""

    def __init__(self, delta: bool) -> None:
        self.delta = delta
        self.type_fields = [length_delimited(2 if delta else 4, url.encode()) for url in TYPES]
        self._names: dict[frozenset[str], bytes] = {}
        self._interned: dict[frozenset[str], frozenset[str]] = {}

    def intern(self, names: frozenset[str]) -> frozenset[str]:
        return self._interned.setdefault(names, names)

    def names(self, names: frozenset[str], number: int = 3) -> bytes:
        if number != 3:
            return b"".join(length_delimited(number, n.encode()) for n in sorted(names))
        framed = self._names.get(names)
        if framed is None:
            framed = self._names[names] = b"".join(length_delimited(3, n.encode()) for n in sorted(names))
        return framed

    def first(self, node_id: str, cluster: str) -> bytes:
        return node_field(1 if self.delta else 2, node_id, cluster) + self.type_fields[CDS]

    def sotw(self, kind: int, version: bytes, names: frozenset[str], nonce: bytes) -> bytes:
        out = b""
        if version:
            out += b"\x0a" + varint(len(version)) + version
        out += self.names(names) + self.type_fields[kind]
        if nonce:
            out += b"\x2a" + varint(len(nonce)) + nonce
        return out

    def delta_ack(self, kind: int, nonce: bytes) -> bytes:
        return self.type_fields[kind] + b"\x32" + varint(len(nonce)) + nonce

    def delta_subscribe(self, kind: int, added: frozenset[str], removed: frozenset[str]) -> bytes:
        return self.type_fields[kind] + self.names(added) + self.names(removed, 4)


_EMPTY: frozenset[str] = frozenset()
_NO_INFOS: frozenset[Info] = frozenset()


class Proxy:
    """One simulated Envoy: one ADS stream and what it holds."""

    __slots__ = (
        "acked",
        "change_at",
        "changes",
        "cluster",
        "error",
        "got",
        "held",
        "index",
        "lds_asked",
        "node_id",
        "nonce",
        "pushed",
        "ready_at",
        "rx",
        "stream_id",
        "subs",
        "version",
        "watch_at",
        "window",
    )

    def __init__(self, index: int, node_id: str, cluster: str) -> None:
        self.index = index
        self.node_id = node_id
        self.cluster = cluster
        self.stream_id = 0
        self.window = 0
        self.rx = b""
        self.acked = 0
        self.subs: list[frozenset[str]] = [_EMPTY] * 5
        self.got: list[set[str] | None] = [None] * 5  # names still awaited (None: none)
        self.held: list[frozenset[Info]] = [_NO_INFOS, _NO_INFOS]  # clusters, listeners
        self.version: list[bytes] = [b""] * 5
        self.nonce: list[bytes] = [b""] * 5
        self.ready_at = 0.0
        self.changes = 0
        self.change_at = 0.0
        self.watch_at = 0.0  # last SDS response (while armed) carrying Tracker.watch
        self.pushed = [0] * 5
        self.error = ""
        self.lds_asked = False

    def missing(self) -> int:
        return sum(len(g) for g in self.got if g)

    def converged(self) -> bool:
        return self.acked == ALL_TYPES and not any(self.got)


@dataclass
class Tracker:
    pending: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: list[str] = field(default_factory=list)
    armed: bool = False
    watch: str = ""  # a secret name whose SDS responses are timed per proxy (`arm`)
    received_bytes: int = 0
    responses: int = 0

    def on_ready(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.ready.set()

    def on_failed(self, message: str) -> None:
        self.failed.append(message)
        self.on_ready()


class AdsConnection(H2Connection[Proxy]):
    """Mesh proxies: subscriptions follow what they hold, as Envoy's do (the transport is
    fanout_client's)."""

    def __init__(
        self,
        proxies: list[Proxy],
        delta: bool,
        requests: Requests,
        cache: InfoCache,
        authority: bytes,
        tracker: Tracker,
    ) -> None:
        super().__init__(proxies, DELTA_PATH if delta else SOTW_PATH, authority, tracker)
        self._delta = delta
        self._requests = requests
        self._cache = cache
        self._tracker = tracker

    def _first_request(self, proxy: Proxy) -> bytes:
        return self._requests.first(proxy.node_id, proxy.cluster)

    def _ready(self, proxy: Proxy) -> bool:
        return bool(proxy.ready_at)

    def _on_bytes(self, count: int) -> None:
        self._tracker.received_bytes += count

    def _on_message(self, proxy: Proxy, data: bytes, start: int, end: int, now: float) -> None:
        self._on_response(proxy, parse_response(data, start, end, self._delta, self._cache))

    # the proxy's behaviour -----------------------------------------------------------------

    def _on_response(self, proxy: Proxy, response: Response) -> None:
        kind = response.kind
        if kind < 0:
            proxy.error = "unexpected type"
            self._tracker.failed.append(proxy.error)
            return
        self._tracker.responses += 1
        requests = self._requests
        proxy.version[kind] = response.version
        proxy.nonce[kind] = response.nonce
        if self._delta:
            self._send(proxy, requests.delta_ack(kind, response.nonce))
        else:
            self._send(proxy, requests.sotw(kind, response.version, proxy.subs[kind], response.nonce))
        got = proxy.got[kind]
        if got:
            got.difference_update(info.name for info in response.infos)
        if kind in (CDS, LDS):
            self._held(proxy, kind, response)
        first = not proxy.acked & (1 << kind)
        proxy.acked |= 1 << kind
        if first and kind == EDS:
            self._subscribe(proxy, LDS, _EMPTY)
        if self._tracker.armed:
            proxy.changes += 1
            proxy.change_at = time.monotonic()
            proxy.pushed[kind] += len(response.infos)
            watch = self._tracker.watch
            if watch and kind == SDS and any(info.name == watch for info in response.infos):
                proxy.watch_at = proxy.change_at
        if not proxy.ready_at and proxy.converged():
            proxy.ready_at = time.monotonic()
            self._tracker.on_ready()

    def _held(self, proxy: Proxy, kind: int, response: Response) -> None:
        slot = 0 if kind == CDS else 1
        if self._delta:
            gone = set(response.removed) | {info.name for info in response.infos}
            held = frozenset(i for i in proxy.held[slot] if i.name not in gone) | frozenset(response.infos)
        else:
            held = frozenset(response.infos)
        proxy.held[slot] = held
        if kind == CDS:
            eds = frozenset(i.eds for i in held if i.eds is not None)
            self._subscribe(proxy, EDS, eds)
        else:
            self._subscribe(proxy, RDS, frozenset(r for i in held for r in i.routes))
        secrets = frozenset(s for infos in proxy.held for i in infos for s in i.secrets)
        self._subscribe(proxy, SDS, secrets)

    def _subscribe(self, proxy: Proxy, kind: int, names: frozenset[str]) -> None:
        """Ask for `names` of `kind` (LDS: wildcard, once) unless that is the subscription already."""
        requests = self._requests
        if kind == LDS:
            if not proxy.lds_asked:
                proxy.lds_asked = True
                if self._delta:
                    self._send(proxy, requests.type_fields[LDS])
                else:
                    self._send(proxy, requests.sotw(LDS, b"", _EMPTY, b""))
            return
        names = requests.intern(names)
        old = proxy.subs[kind]
        bit = 1 << kind
        if names is old and (names or proxy.acked & bit):
            return
        proxy.subs[kind] = names
        got = proxy.got[kind]
        if got is None:
            got = proxy.got[kind] = set()
        got.update(names - old)
        got.intersection_update(names)
        if not got:
            proxy.got[kind] = None
        if not names and not proxy.nonce[kind]:
            proxy.acked |= bit  # nothing to ask for, nothing to wait for
            if kind == EDS:
                self._subscribe(proxy, LDS, _EMPTY)
            return
        if self._delta:
            self._send(proxy, requests.delta_subscribe(kind, names - old, old - names))
        else:
            self._send(proxy, requests.sotw(kind, proxy.version[kind], names, proxy.nonce[kind]))


# --- the load process -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    delta: bool
    proxies: tuple[tuple[str, str], ...]  # (node id, node cluster)
    streams_per_connection: int


def run(control: Connection, spec: LoadSpec) -> None:
    """Entry point of a load process: serve the orchestrator's commands until "stop"."""
    raise_file_limit()
    asyncio.run(_LoadProcess(control, spec).main())


class _LoadProcess(ControlledLoad):
    def __init__(self, control: Connection, spec: LoadSpec) -> None:
        super().__init__(control)
        self._spec = spec
        self._proxies = [Proxy(i, node, cluster) for i, (node, cluster) in enumerate(spec.proxies)]
        self._tracker = Tracker(pending=len(self._proxies))
        self._cache = InfoCache()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "connect_to": self._connect_to,
            "connect": self._connect,
            "status": self._status,
            "arm": self._arm,
            "report": self._report,
        }

    def _connect_to(self, port: int) -> None:
        self._spec = dataclasses.replace(self._spec, port=port)
        self._control.send({"port": port})

    async def _connect(self) -> None:
        """Open every stream; answers "connected" at once (convergence is polled with "status")."""
        spec = self._spec
        loop = asyncio.get_running_loop()
        requests = Requests(spec.delta)
        authority = f"{spec.host}:{spec.port}".encode()
        per = spec.streams_per_connection
        for offset in range(0, len(self._proxies), per):
            group = self._proxies[offset : offset + per]
            factory = functools.partial(
                AdsConnection, group, spec.delta, requests, self._cache, authority, self._tracker
            )
            _, connection = await loop.create_connection(factory, spec.host, spec.port)
            self._connections.append(connection)
        for opened in self._connections:
            await opened.settings_seen.wait()
            if opened.error:
                raise RuntimeError(opened.error)
            opened.open_streams()
        self._control.send({"connected": time.monotonic()})

    def _status(self) -> None:
        ready = [p.ready_at for p in self._proxies if p.ready_at]
        self._control.send(
            {
                "ready": len(ready),
                "ready_last": max(ready, default=0.0),
                "ready_times": ready if len(ready) == len(self._proxies) else [],
                "converged": sum(1 for p in self._proxies if p.converged()),
                "watched": {p.node_id: p.watch_at for p in self._proxies if p.watch_at},
                "missing": sum(p.missing() for p in self._proxies),
                "responses": self._tracker.responses,
                "bytes": self._tracker.received_bytes,
                "failures": len(self._tracker.failed),
                "failed": self._tracker.failed[:5],
                "errors": [p.error for p in self._proxies if p.error][:5],
                "extracted": self._cache.extracted,
                "cpu": time.process_time(),
            }
        )

    def _arm(self, watch: str = "") -> None:
        for proxy in self._proxies:
            proxy.changes = 0
            proxy.change_at = 0.0
            proxy.watch_at = 0.0
            proxy.pushed = [0] * 5
        self._tracker.watch = watch
        self._tracker.armed = True
        self._control.send({"armed": True, "bytes": self._tracker.received_bytes, "cpu": time.process_time()})

    def _report(self) -> None:
        changed = [p for p in self._proxies if p.changes]
        pushed = [sum(p.pushed[k] for p in changed) for k in range(5)]
        self._control.send(
            {
                "times": [p.change_at for p in changed],
                "watched": {p.node_id: p.watch_at for p in self._proxies if p.watch_at},
                "responses": sum(p.changes for p in changed),
                "pushed": dict(zip(SHORT, pushed, strict=True)),
                "unconverged": sum(1 for p in self._proxies if not p.converged()),
                "bytes": self._tracker.received_bytes,
                "failures": len(self._tracker.failed),
                "failed": self._tracker.failed[:5],
                "cpu": time.process_time(),
            }
        )


def self_check() -> None:
    """Prove the name extraction against betterproto2 on meshcp-shaped resources."""
    tls = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificate_sds_secret_configs=[SdsSecretConfig(name="service-cert:a/b")],
            validation_context_sds_secret_config=SdsSecretConfig(name="root-cert-for-mtls-outbound:c/d"),
        ),
        sni="d.c.svc.cluster.local",
    )
    cluster = Cluster(
        name="c/d|8080",
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(service_name="c/d|8080"),
        transport_socket=TransportSocket(name="tls", typed_config=AnyMessage.pack(tls)),
    )
    info = extract(CDS, bytes(cluster))
    assert info == Info("c/d|8080", "c/d|8080", ("root-cert-for-mtls-outbound:c/d", "service-cert:a/b")), info
    local = Cluster(name="a/b|8080|local", type=ClusterDiscoveryType.STATIC)
    assert extract(CDS, bytes(local)) == Info("a/b|8080|local"), extract(CDS, bytes(local))
    hcm = HttpConnectionManager(stat_prefix="x", rds=Rds(route_config_name="rds-inbound.8080"))
    down = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            validation_context_sds_secret_config=SdsSecretConfig(name="root-cert-for-mtls-inbound:a/b")
        )
    )
    listener = Listener(
        name="inbound-listener",
        filter_chains=[
            FilterChain(
                filters=[Filter(name="hcm", typed_config=AnyMessage.pack(hcm))],
                transport_socket=TransportSocket(name="tls", typed_config=AnyMessage.pack(down)),
            )
        ],
    )
    info = extract(LDS, bytes(listener))
    assert info == Info(
        "inbound-listener", None, ("root-cert-for-mtls-inbound:a/b",), ("rds-inbound.8080",)
    ), info
