"""What a simulated mesh proxy reads in the responses it receives, without decoding them.

A resource's name is its field 1; a cluster's type and EDS service name are top-level
fields; the secret and route names a cluster or listener references are found as the
length-delimited fields that carry them (`SdsSecretConfig.name` = field 1 holding one of
the mesh's secret names, `Rds.route_config_name` = field 2 starting with `rds-`). Results are cached
per distinct resource bytes, so proxies sharing a configuration cost one extraction.
`self_check` proves the extraction against betterproto2 on real meshcp-shaped resources.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

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
from meshcp.cache.wire import read_varint
from meshcp.compile import cds, naming
from meshcp.identity import Identity
from meshcp.policy.types import ServiceKey

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

#: `SdsSecretConfig.name` (field 1) holding one of the names the mesh serves, its length
#: included: the same few bytes in every cluster and listener that names them.
_SECRET_REF = re.compile(
    rb"\x0a(" + b"|".join(re.escape(bytes([len(n)]) + n.encode()) for n in sorted(naming.SECRETS)) + rb")"
)
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


def _secret_refs(value: bytes) -> tuple[str, ...]:
    return tuple(sorted({m.group(1)[1:].decode() for m in _SECRET_REF.finditer(value)}))


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
        return Info(name, eds, _secret_refs(value))
    if kind == LDS:
        return Info(name, None, _secret_refs(value), _refs(_ROUTE_REF, value))
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


def self_check() -> None:
    """Prove the name extraction against betterproto2 on meshcp-shaped resources."""
    cluster = cds.upstream_cluster(ServiceKey("c", "d"), 8080, False, [Identity("c", "d")], "cluster.local")
    cluster.eds_cluster_config = ClusterEdsClusterConfig(service_name="c/d|8080")
    info = extract(CDS, bytes(cluster))
    assert info == Info("c/d|8080", "c/d|8080", ("root-cert", "service-cert")), info
    # A SAN or a name that merely starts like a secret name is not a reference.
    tls = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificate_sds_secret_configs=[SdsSecretConfig(name="service-cert:a/b")],
            validation_context_sds_secret_config=SdsSecretConfig(name="root-certs"),
        ),
        sni="root-cert",
    )
    other = Cluster(
        name="x|1",
        type=ClusterDiscoveryType.EDS,
        transport_socket=TransportSocket(name="tls", typed_config=AnyMessage.pack(tls)),
    )
    assert extract(CDS, bytes(other)) == Info("x|1", "x|1"), extract(CDS, bytes(other))
    local = Cluster(name="a/b|8080|local", type=ClusterDiscoveryType.STATIC)
    assert extract(CDS, bytes(local)) == Info("a/b|8080|local"), extract(CDS, bytes(local))
    hcm = HttpConnectionManager(stat_prefix="x", rds=Rds(route_config_name="rds-inbound.8080"))
    down = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            validation_context_sds_secret_config=SdsSecretConfig(name="root-cert")
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
    assert info == Info("inbound-listener", None, ("root-cert",), ("rds-inbound.8080",)), info
