"""Readers of the core Kubernetes kinds meshcp uses: Namespace, ServiceAccount, Service, Pod, EndpointSlice.

Only the fields meshcp needs are read; each is checked as the API server would, since a
file source has no API server in front of it.
"""

from __future__ import annotations

import ipaddress

from meshcp.model.core import (
    PROTOCOLS,
    ContainerPort,
    EndpointSlice,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)
from meshcp.model.fields import Field, FieldError, describe
from meshcp.model.meta import Meta
from meshcp.model.names import dns_label, dns_subdomain, port_name

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def protocol_decided(app_protocol: str, name: str) -> bool:
    """Whether appProtocol or the port name says how a port is spoken (else `port_protocol`
    assumes http)."""
    if app_protocol.lower() in PROTOCOLS:
        return True
    lowered = name.lower()
    return lowered.startswith("tcp-server-first") or lowered.split("-", 1)[0] in PROTOCOLS


def port_protocol(app_protocol: str, name: str) -> str:
    """How a service port is spoken: appProtocol when it is one meshcp knows, else the port
    name's prefix (`tcp-server-first`, or the part before the first `-`, or the whole name),
    else http. An unknown appProtocol (Kubernetes allows implementation-specific values such
    as `kubernetes.io/h2c`) falls through to the name rule rather than rejecting the Service."""
    declared = app_protocol.lower()
    if declared in PROTOCOLS:
        return declared
    lowered = name.lower()
    if lowered == "tcp-server-first" or lowered.startswith("tcp-server-first-"):
        return "tcp-server-first"
    prefix = lowered.split("-", 1)[0]
    return prefix if prefix in PROTOCOLS else "http"


def read_namespace(root: Field, meta: Meta, version: str) -> Namespace:
    return Namespace(meta)


def read_service_account(root: Field, meta: Meta, version: str) -> ServiceAccount:
    return ServiceAccount(meta)


def read_service(root: Field, meta: Meta, version: str) -> Service:
    spec = root.field("spec")
    ports = tuple(_service_port(node) for node in spec.field("ports").items())
    seen: dict[tuple[int, str], int] = {}
    names: set[str] = set()
    for index, port in enumerate(ports):
        where = f"spec.ports[{index}]"
        if (port.port, port.transport) in seen:
            other = seen[(port.port, port.transport)]
            raise FieldError(f"{where}.port: {port.port}/{port.transport} is also spec.ports[{other}]")
        seen[(port.port, port.transport)] = index
        if port.name and port.name in names:
            raise FieldError(f"{where}.name: {port.name!r} is used by two ports")
        names.add(port.name)
    cluster_ip = spec.field("clusterIP")
    if cluster_ip.value != "None":
        _ip(cluster_ip)
    selector = spec.field("selector").string_map()
    return Service(
        meta=meta,
        ports=ports,
        # Kubernetes: an empty selector is no selector (endpoints are managed elsewhere).
        selector=selector or None,
        cluster_ip=cluster_ip.string(),
    )


def _service_port(node: Field) -> ServicePort:
    port = node.field("port").port()
    name = dns_label(node.field("name"), required=False)
    transport = node.field("protocol").string() or "TCP"
    if transport not in ("TCP", "UDP", "SCTP"):
        node.field("protocol").fail(f"must be TCP, UDP or SCTP, got {describe(transport)}")
    target = node.field("targetPort")
    target_port: int | str = port
    if isinstance(target.value, str) and target.value.isdigit():
        target_port = Field(int(target.value), target.path).port()
    elif isinstance(target.value, str):
        target_port = port_name(target)
    elif target.present:
        target_port = target.port()
    app_protocol = node.field("appProtocol").string()
    return ServicePort(
        port=port,
        target_port=target_port,
        protocol=port_protocol(app_protocol, name),
        name=name,
        transport=transport,
        app_protocol=app_protocol,
    )


def read_pod(root: Field, meta: Meta, version: str) -> Pod:
    spec, status = root.field("spec"), root.field("status")
    account_field = spec.field("serviceAccountName")
    if not account_field.present:
        account_field = spec.field("serviceAccount")  # the deprecated alias
    account = dns_subdomain(account_field, required=False) or "default"
    ready = False
    for condition in status.field("conditions").items():
        if condition.field("type").string() == "Ready":
            ready = condition.field("status").string() == "True"
    ports: list[ContainerPort] = []
    for container in spec.field("containers").items():
        for port in container.field("ports").items():
            ports.append(ContainerPort(port.field("containerPort").port(), port_name(port.field("name"))))
    return Pod(
        meta=meta,
        service_account=account,
        ip=_ip(status.field("podIP")),
        ready=ready,
        ports=tuple(ports),
        host_network=spec.field("hostNetwork").boolean(False),
    )


def read_endpoint_slice(root: Field, meta: Meta, version: str) -> EndpointSlice:
    service = meta.labels.get(SERVICE_NAME_LABEL, "")
    if not service:
        raise FieldError(f"metadata.labels.{SERVICE_NAME_LABEL}: required (it names the slice's Service)")
    address_type = root.field("addressType").string()
    if address_type not in ("", "IPv4", "IPv6", "FQDN"):
        root.field("addressType").fail(f"must be IPv4, IPv6 or FQDN, got {describe(address_type)}")
    endpoints: list[SliceEndpoint] = []
    for endpoint in root.field("endpoints").items():
        addresses = endpoint.field("addresses").items()
        if not addresses:
            endpoint.field("addresses").fail("at least one address is required")
        for address in addresses:
            _slice_address(address, address_type)
        target = endpoint.field("targetRef")
        pod = target.field("name").string() if target.field("kind").string() in ("", "Pod") else ""
        endpoints.append(
            SliceEndpoint(
                addresses=tuple(address.value for address in addresses),
                ready=endpoint.field("conditions").field("ready").boolean(True),
                pod=pod,
            )
        )
    ports = tuple(
        SlicePort(port=node.field("port").port(), name=dns_label(node.field("name"), required=False))
        for node in root.field("ports").items()
    )
    return EndpointSlice(meta=meta, service=service, endpoints=tuple(endpoints), ports=ports)


def _slice_address(node: Field, address_type: str) -> None:
    if address_type == "FQDN":
        dns_subdomain(node)
        return
    value = _ip(node)
    if not value:
        node.fail("required")
    family = ipaddress.ip_address(value).version
    if address_type and f"IPv{family}" != address_type:
        node.fail(f"is an IPv{family} address in a slice of addressType {address_type}")


def _ip(node: Field) -> str:
    value = node.string()
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            node.fail(f"must be an IP address, got {describe(value)}")
    return value
