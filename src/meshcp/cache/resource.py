"""One encoded xDS resource: name, content-hash version and the bytes every proxy shares."""

from __future__ import annotations

import betterproto2

from meshcp.cache.wire import length_delimited

_NAME_FIELDS = ("name", "cluster_name")


class Resource:
    """An immutable, already encoded resource.

    `body` is the serialised `google.protobuf.Any`; responses are framed from it
    without re-encoding. `endpoints` names the ClusterLoadAssignment an EDS cluster
    needs, so the server can re-send it after the cluster changes.
    """

    __slots__ = ("__weakref__", "_body", "_delta_entry", "endpoints", "name", "type_url", "version")

    def __init__(
        self, type_url: str, name: str, version: str, body: bytes, endpoints: str | None = None
    ) -> None:
        self.type_url = type_url
        self.name = name
        self.version = version
        self._body = body
        self.endpoints = endpoints
        self._delta_entry: bytes | None = None

    @property
    def body(self) -> bytes:
        return self._body

    def delta_entry(self) -> bytes:
        """This resource as an encoded `envoy.service.discovery.v3.Resource` (for delta).

        Built on first use and kept: every delta stream sends the same bytes.
        """
        if self._delta_entry is None:
            self._delta_entry = (
                length_delimited(1, self.version.encode())
                + length_delimited(2, self.body)
                + length_delimited(3, self.name.encode())
            )
        return self._delta_entry

    def __repr__(self) -> str:
        return f"Resource({self.type_url.rsplit('.', 1)[-1]} {self.name!r} {self.version[:8]})"


class ComposedResource(Resource):
    """A resource whose bytes are kept as three shared parts and joined when sent.

    A mesh of S services has about S² upstream clusters (every identity has one per
    service) that differ only in the client certificate's secret name: the parts before
    and after it are shared by every identity (per service) and the middle by every
    service (per identity). Holding references instead of joined bytes keeps them in a
    fraction of the memory; joining them again when a response is framed is cheap.
    """

    __slots__ = ("_head", "_tail")

    def __init__(
        self,
        type_url: str,
        name: str,
        version: str,
        parts: tuple[bytes, bytes, bytes],
        endpoints: str | None = None,
    ) -> None:
        # Not through Resource.__init__: one is made per resource of a full compile.
        self.type_url = type_url
        self.name = name
        self.version = version
        self._head, self._body, self._tail = parts
        self.endpoints = endpoints
        self._delta_entry = None

    @property
    def body(self) -> bytes:
        return self._head + self._body + self._tail


def resource_name(message: betterproto2.Message) -> str:
    """The xDS name of a resource message (`name`, or `cluster_name` for endpoints)."""
    for field in _NAME_FIELDS:
        value = getattr(message, field, None)
        if isinstance(value, str) and value:
            return value
    raise ValueError(f"{type(message).__name__} has no name")
