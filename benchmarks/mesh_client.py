"""Simulated Envoys for `mesh_scale.py`: one ADS stream per pod, subscribing as Envoy does.

Built on the raw HTTP/2 framing of `h2_client.py` (no grpclib, no betterproto2 on the hot
path; `fanout_client.self_check` proves the shared framing), but unlike the fan-out client
every proxy has its own node (the pod's `<uuid>.sidecar.<sa>.<ns>.cluster.local` id and
`<ns>/<sa>` cluster, as `meshcp bootstrap` writes them; meshcp's bootstraps carry no node
metadata) and follows what it receives (read by `mesh_resources.py`):

- CDS wildcard (first request, carrying the node);
- on clusters: EDS for the EDS clusters received (`eds_cluster_config.service_name` or the
  cluster name), SDS for the secrets the clusters reference;
- after the first EDS answer: LDS wildcard;
- on listeners: RDS for the route names in their HCMs, SDS for the secrets they reference;
- every response ACKed (SotW: version, current names of the type, nonce; delta: nonce);
  subscriptions follow later CDS/LDS changes (SotW: a new request with the new names;
  delta: subscribe/unsubscribe).

A proxy is converged when it has ACKed every type at least once and holds every EDS, RDS and
SDS name it subscribes to.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ads_wire import DELTA_PATH, SOTW_PATH, names_field, node_field
from control_pipe import run_child
from h2_client import H2Connection
from load_process import ControlledLoad, Tracker
from mesh_resources import (
    ALL_TYPES,
    CDS,
    EDS,
    LDS,
    RDS,
    SDS,
    SHORT,
    TYPES,
    Info,
    InfoCache,
    Response,
    parse_response,
)

from meshcp.cache.wire import length_delimited, varint

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
            return names_field(number, sorted(names))
        framed = self._names.get(names)
        if framed is None:
            framed = self._names[names] = names_field(3, sorted(names))
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
        self.watch_at = 0.0  # last SDS response (while armed) carrying MeshTracker.watch
        self.pushed = [0] * 5
        self.error = ""
        self.lds_asked = False

    def missing(self) -> int:
        return sum(len(g) for g in self.got if g)

    def converged(self) -> bool:
        return self.acked == ALL_TYPES and not any(self.got)


@dataclass
class MeshTracker(Tracker):
    """A mesh load process's progress, and what it counts while armed."""

    watch: str = ""  # a secret name whose SDS responses are timed per proxy (`arm`)
    received_bytes: int = 0
    responses: int = 0


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
        tracker: MeshTracker,
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
    run_child(lambda: _LoadProcess(control, spec).main())


class _LoadProcess(ControlledLoad):
    def __init__(self, control: Connection, spec: LoadSpec) -> None:
        super().__init__(control)
        self._spec = spec
        self._proxies = [Proxy(i, node, cluster) for i, (node, cluster) in enumerate(spec.proxies)]
        self._tracker = MeshTracker(pending=len(self._proxies))
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
        requests = Requests(spec.delta)
        authority = f"{spec.host}:{spec.port}".encode()

        def connection(group: list[Proxy]) -> H2Connection[Proxy]:
            return AdsConnection(group, spec.delta, requests, self._cache, authority, self._tracker)

        await self.open_connections(
            self._proxies, spec.streams_per_connection, spec.host, spec.port, connection
        )
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
