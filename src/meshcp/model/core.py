"""The Kubernetes core objects a mesh needs: namespaces, accounts, services, pods, endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshcp.model.meta import Meta, ObjectRef

#: How a service port is spoken, decided from appProtocol, then the port name prefix.
PROTOCOLS = ("http", "grpc", "tcp", "tcp-server-first")


@dataclass(frozen=True, slots=True)
class Namespace:
    meta: Meta

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Namespace", "", self.meta.name)


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    meta: Meta

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("ServiceAccount", self.meta.namespace, self.meta.name)


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a Service. `target_port` is a number, or a container port name."""

    port: int
    target_port: int | str
    protocol: str  # one of PROTOCOLS (already resolved from appProtocol / name)
    name: str = ""
    transport: str = "TCP"  # Kubernetes' protocol field: TCP, UDP, SCTP
    #: appProtocol as written ("" when absent): `meshcp analyze` tells a decided protocol
    #: from one assumed (neither appProtocol nor the name says it).
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class Service:
    meta: Meta
    ports: tuple[ServicePort, ...]
    #: None: no selector (endpoints come only from EndpointSlices).
    selector: Mapping[str, str] | None
    cluster_ip: str = ""  # "None": headless; "": not assigned yet

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Service", self.meta.namespace, self.meta.name)

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Pod:
    meta: Meta
    service_account: str
    ip: str
    ready: bool
    ports: tuple[ContainerPort, ...] = ()
    host_network: bool = False

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Pod", self.meta.namespace, self.meta.name)


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    #: The pod behind it (targetRef), when known: lets EDS keep only meshed endpoints.
    pod: str = ""


@dataclass(frozen=True, slots=True)
class SlicePort:
    port: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """discovery.k8s.io/v1 EndpointSlice; `service` is its kubernetes.io/service-name label."""

    meta: Meta
    service: str
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("EndpointSlice", self.meta.namespace, self.meta.name)
