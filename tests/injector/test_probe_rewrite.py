"""Probes pointed at the sidecar's probe listeners, and the ones that cannot be, with the reason."""

from __future__ import annotations

import json

from meshcp.injector.pod_patch import ORIGINAL_PROBES_ANNOTATION
from meshcp.sidecar.ports import PROBE_PORTS
from tests.injector.injection import inject
from tests.injector.reviews import bare_pod, container, deployment_pod


def test_probes_point_at_the_sidecar() -> None:
    pod = deployment_pod()
    patched, _, warnings = inject(pod)
    app = container(patched, "bookstore")
    assert app["livenessProbe"]["httpGet"] == {
        "path": "/meshcp/liveness/bookstore",
        "port": PROBE_PORTS["liveness"],
        "scheme": "HTTP",
    }
    assert app["livenessProbe"]["initialDelaySeconds"] == 3  # timing is kept
    readiness = app["readinessProbe"]["httpGet"]
    assert readiness["port"] == PROBE_PORTS["readiness"]
    assert readiness["httpHeaders"] == [{"name": "X-Probe", "value": "kubelet"}]
    assert app["startupProbe"]["tcpSocket"] == {"port": PROBE_PORTS["startup"]}
    assert app["startupProbe"]["failureThreshold"] == 30
    # exec probes run inside the container: untouched.
    assert (
        container(patched, "log-shipper")["livenessProbe"] == container(pod, "log-shipper")["livenessProbe"]
    )
    assert warnings == ()

    originals = json.loads(patched["metadata"]["annotations"][ORIGINAL_PROBES_ANNOTATION])
    assert originals == [
        {
            "container": "bookstore",
            "probe": "liveness",
            "sidecarPort": 15901,
            "sidecarPath": "/meshcp/liveness/bookstore",
            "path": "/liveness",
            "scheme": "HTTP",
            "port": 14001,
        },
        {
            "container": "bookstore",
            "probe": "readiness",
            "sidecarPort": 15902,
            "sidecarPath": "/meshcp/readiness/bookstore",
            "path": "/readiness?full=1",
            "scheme": "HTTP",
            "port": 14002,  # the named port "admin", resolved
        },
        {"container": "bookstore", "probe": "startup", "sidecarPort": 15903, "scheme": "TCP", "port": 14001},
    ]


def test_every_http_probe_gets_its_own_path() -> None:
    pod = bare_pod()
    pod["spec"]["containers"] = [
        {"name": name, "image": "app:1", "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}}}
        for name, port in (("api", 8080), ("worker", 9090))
    ]
    patched, _, warnings = inject(pod)
    paths = [container(patched, name)["livenessProbe"]["httpGet"]["path"] for name in ("api", "worker")]
    assert paths == ["/meshcp/liveness/api", "/meshcp/liveness/worker"]
    assert warnings == ()


def test_probes_left_as_they_are_say_why() -> None:
    pod = bare_pod()
    pod["spec"]["containers"] = [
        {"name": "db", "image": "postgres:16", "livenessProbe": {"tcpSocket": {"port": 5432}}},
        {"name": "cache", "image": "redis:7", "livenessProbe": {"tcpSocket": {"port": 6379}}},
        {"name": "grpc", "image": "grpc:1", "readinessProbe": {"grpc": {"port": 50051}}},
        {"name": "named", "image": "app:1", "readinessProbe": {"httpGet": {"path": "/", "port": "missing"}}},
        {"name": "other", "image": "app:1", "startupProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}}},
        {"name": "tls", "image": "app:1", "livenessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}},
    ]
    patched, _, warnings = inject(pod)
    for name in ("db", "cache", "grpc", "named", "other"):
        assert container(patched, name) == container(pod, name), name
    assert len(warnings) == 4
    assert any("db" in w and "TCP" in w for w in warnings)
    assert any("grpc" in w and "gRPC" in w for w in warnings)
    assert any("'missing'" in w for w in warnings)
    # HTTPS probes are forwarded too: kubelet never verifies their certificate.
    assert container(patched, "tls")["livenessProbe"]["httpGet"]["port"] == 15901
    originals = json.loads(patched["metadata"]["annotations"][ORIGINAL_PROBES_ANNOTATION])
    assert originals == [
        {
            "container": "tls",
            "probe": "liveness",
            "sidecarPort": 15901,
            "sidecarPath": "/meshcp/liveness/tls",
            "path": "/",
            "scheme": "HTTPS",
            "port": 8443,
        }
    ]


def test_probe_paths_are_normalised_or_left_alone() -> None:
    pod = deployment_pod()
    container = pod["spec"]["containers"][0]
    container["livenessProbe"] = {"httpGet": {"path": "healthz", "port": 14001}}
    container["readinessProbe"] = {"httpGet": {"path": "/ready\x0f", "port": 14001}}
    patched, _, warnings = inject(pod)
    original = json.loads(patched["metadata"]["annotations"]["meshcp.dev/original-probes"])
    liveness = [entry for entry in original if entry["probe"] == "liveness"]
    assert liveness and liveness[0]["path"] == "/healthz"  # kubelet adds the leading slash too
    assert patched["spec"]["containers"][0]["readinessProbe"] == {
        "httpGet": {"path": "/ready\x0f", "port": 14001}
    }
    assert any("cannot be forwarded" in warning for warning in warnings)
