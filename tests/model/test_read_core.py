"""Reading Services, Pods and EndpointSlices: every field meshcp uses, and each refusal."""

from __future__ import annotations

import pytest

from meshcp.model.core import (
    ContainerPort,
    EndpointSlice,
    Pod,
    Service,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)
from meshcp.model.meta import Meta, frozen_map
from meshcp.model.read_core import port_protocol
from tests.model.manifests import (
    POD,
    SLICE,
    Invalid,
    Valid,
    manifest,
    meta,
    reading_tests,
    service,
    slice_with,
    with_labels,
)

VALID: Valid = [
    (
        "service ports, selector, clusterIP",
        service(
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "grpc-api", "port": 81, "targetPort": "api"},
            {"name": "db", "port": 82, "targetPort": "9000", "appProtocol": "tcp", "protocol": "TCP"},
            {"port": 83},
            selector={"app": "web"},
            clusterIP="10.96.0.10",
        ),
        Service(
            meta(),
            (
                ServicePort(80, 8080, "http", "http"),
                ServicePort(81, "api", "grpc", "grpc-api"),
                ServicePort(82, 9000, "tcp", "db", app_protocol="tcp"),
                ServicePort(83, 83, "http", ""),
            ),
            frozen_map({"app": "web"}),
            "10.96.0.10",
        ),
    ),
    (
        "headless service without selector",
        service({"port": 53, "protocol": "UDP", "name": "dns"}, clusterIP="None", selector={}),
        Service(meta(), (ServicePort(53, 53, "http", "dns", "UDP"),), None, "None"),
    ),
    (
        "pod",
        POD,
        Pod(
            meta("web-0"),
            "web",
            "10.244.1.5",
            True,
            (ContainerPort(8080, "http"), ContainerPort(9090)),
            host_network=True,
        ),
    ),
    (
        "pod without account, address or readiness",
        manifest("v1", "Pod", "p", status={"conditions": [{"type": "Ready", "status": "False"}]}),
        Pod(meta("p"), "default", "", False),
    ),
    (
        "endpoint slice",
        SLICE,
        EndpointSlice(
            Meta("web-abc", "ns", frozen_map({"kubernetes.io/service-name": "web"})),
            "web",
            (SliceEndpoint(("10.244.1.5",), True, "web-0"), SliceEndpoint(("10.244.1.6",), False)),
            (SlicePort(8080, "http"),),
        ),
    ),
]

INVALID: Invalid = [
    # Service
    ("port zero", service({"port": 0}), "spec.ports[0].port: must be a port number 1..65535, got 0"),
    (
        "port too big",
        service({"port": 70000}),
        "spec.ports[0].port: must be a port number 1..65535, got 70000",
    ),
    (
        "port a string",
        service({"port": "80"}),
        "spec.ports[0].port: must be a port number 1..65535, got '80'",
    ),
    ("port missing", service({"name": "http"}), "spec.ports[0].port: required"),
    (
        "targetPort range",
        service({"port": 80, "targetPort": 0}),
        "spec.ports[0].targetPort: must be a port number",
    ),
    (
        "targetPort name",
        service({"port": 80, "targetPort": "Web_Port"}),
        "spec.ports[0].targetPort: must be a port name",
    ),
    (
        "transport",
        service({"port": 80, "protocol": "HTTP"}),
        "spec.ports[0].protocol: must be TCP, UDP or SCTP",
    ),
    (
        "duplicate port",
        service({"port": 80}, {"port": 80}),
        "spec.ports[1].port: 80/TCP is also spec.ports[0]",
    ),
    (
        "duplicate port name",
        service({"port": 80, "name": "a"}, {"port": 81, "name": "a"}),
        "spec.ports[1].name",
    ),
    ("clusterIP", service({"port": 80}, clusterIP="10.96.0.300"), "spec.clusterIP: must be an IP address"),
    ("ports not a list", service(ports={"port": 80}), "spec.ports: must be a list, got a mapping"),
    # Pod
    ("podIP", {**POD, "status": {"podIP": "nope"}}, "status.podIP: must be an IP address, got 'nope'"),
    (
        "container port",
        {**POD, "spec": {"containers": [{"ports": [{"name": "http"}]}]}},
        "spec.containers[0].ports[0].containerPort: required",
    ),
    (
        "hostNetwork",
        {**POD, "spec": {"hostNetwork": "yes"}},
        "spec.hostNetwork: must be true or false, got 'yes'",
    ),
    # EndpointSlice
    (
        "slice without service label",
        with_labels(slice_with(), {}),
        "metadata.labels.kubernetes.io/service-name: required",
    ),
    (
        "slice address family",
        slice_with(endpoints=[{"addresses": ["fd00::1"]}]),
        "endpoints[0].addresses[0]: is an IPv6 address in a slice of addressType IPv4",
    ),
    (
        "slice empty addresses",
        slice_with(endpoints=[{"addresses": []}]),
        "endpoints[0].addresses: at least one",
    ),
    ("slice port", slice_with(ports=[{"port": 0}]), "ports[0].port: must be a port number"),
    (
        "slice ready",
        slice_with(endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]),
        "ready",
    ),
]


test_valid, test_invalid = reading_tests(VALID, INVALID)


@pytest.mark.parametrize(
    ("app_protocol", "name", "protocol"),
    [
        ("", "http", "http"),
        ("", "http-web", "http"),
        ("", "grpc", "grpc"),
        ("", "grpc-api", "grpc"),
        ("", "tcp", "tcp"),
        ("", "tcp-db", "tcp"),
        ("", "tcp-server-first", "tcp-server-first"),
        ("", "tcp-server-first-mysql", "tcp-server-first"),
        ("", "tcp-server", "tcp"),
        ("", "mysql", "http"),
        ("", "https", "http"),
        ("", "", "http"),
        ("tcp", "http-web", "tcp"),
        ("GRPC", "", "grpc"),
        ("tcp-server-first", "http", "tcp-server-first"),
        ("kubernetes.io/h2c", "tcp-x", "tcp"),
    ],
)
def test_port_protocol(app_protocol: str, name: str, protocol: str) -> None:
    assert port_protocol(app_protocol, name) == protocol
