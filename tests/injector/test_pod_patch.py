"""The JSONPatch, checked by applying it as the API server does (PyPI jsonpatch) and validating
the resulting Pod against the Kubernetes schema."""

from __future__ import annotations

import dataclasses

from meshcp.injector.pod_patch import ORIGINAL_PROBES_ANNOTATION, sidecar_patch
from meshcp.policy.membership import PROXY_UUID_LABEL
from tests.injector.injection import MESH, TEMPLATE, candidate_for, inject, new_proxy, with_annotations
from tests.injector.reviews import apply_and_validate, bare_pod, container, deployment_pod, review

#: Prometheus' conventional annotations, pointing at the sidecar's Prometheus listener.
SCRAPE = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": "15010",
    "prometheus.io/path": "/stats/prometheus",
}


def test_deployment_pod_gets_a_sidecar() -> None:
    pod = deployment_pod()
    patched, proxy, _ = inject(pod)
    spec = patched["spec"]
    assert [c["name"] for c in spec["containers"]] == ["bookstore", "log-shipper", "envoy"]
    # After the pod's own init containers: they run before Envoy exists, unredirected.
    assert [c["name"] for c in spec["initContainers"]] == ["migrate", "meshcp-init"]
    assert patched["metadata"]["labels"] == {**pod["metadata"]["labels"], PROXY_UUID_LABEL: proxy.proxy_uuid}
    for key, value in pod["metadata"]["annotations"].items():
        assert patched["metadata"]["annotations"][key] == value
    assert "name" not in patched["metadata"]  # generateName pods stay unnamed

    envoy = container(patched, "envoy")
    assert envoy["image"] == MESH.sidecar_image
    assert envoy["args"][envoy["args"].index("--log-level") + 1] == "warning"
    assert envoy["args"][envoy["args"].index("--config-path") + 1] == "/etc/meshcp/bootstrap.json"
    assert envoy["resources"] == TEMPLATE.resources
    assert envoy["securityContext"]["runAsUser"] == 1500
    assert envoy["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in envoy["env"]}
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert env["POD_IP"] == "status.podIP"
    assert env["SERVICE_ACCOUNT"] == "spec.serviceAccountName"
    assert envoy["volumeMounts"] == [
        {"name": "meshcp-bootstrap", "mountPath": "/etc/meshcp", "readOnly": True}
    ]

    init = container(patched, "meshcp-init")
    assert set(init["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert init["securityContext"]["runAsUser"] == 0  # despite the pod's runAsNonRoot
    assert init["command"][:2] == ["/bin/sh", "-c"]
    assert "iptables-restore --noflush" in init["command"][2]
    assert "-A PROXY_OUTPUT -m owner --uid-owner 1500 -j RETURN" in init["command"][2]

    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["meshcp-bootstrap"]["secret"]["secretName"] == f"meshcp-bootstrap-{proxy.proxy_uuid}"
    assert "kube-api-access-x7k2p" in volumes


def test_bare_pod_gets_the_maps_and_lists_it_lacks() -> None:
    pod = bare_pod()
    candidate = candidate_for(review(pod))
    proxy = new_proxy(candidate)
    operations = sidecar_patch(candidate, proxy, TEMPLATE, MESH).operations
    paths = {op["path"] for op in operations}
    assert {"/metadata/labels", "/spec/initContainers", "/spec/volumes", "/spec/containers/-"} <= paths
    assert "/metadata/annotations" in paths  # no probes to record, but the scrape annotations
    patched = apply_and_validate(pod, operations)
    assert patched["metadata"]["labels"] == {PROXY_UUID_LABEL: proxy.proxy_uuid}
    assert patched["metadata"]["annotations"] == SCRAPE
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["meshcp-init"]


def test_existing_maps_get_escaped_keys() -> None:
    pod = deployment_pod()
    candidate = candidate_for(review(pod))
    operations = sidecar_patch(candidate, new_proxy(candidate), TEMPLATE, MESH).operations
    paths = [op["path"] for op in operations]
    assert "/metadata/labels/meshcp.dev~1proxy-uuid" in paths
    assert "/metadata/annotations/meshcp.dev~1original-probes" in paths
    assert "/spec/initContainers/-" in paths and "/spec/volumes/-" in paths


def test_null_maps_and_lists_are_replaced() -> None:
    pod = bare_pod()
    pod["metadata"]["labels"] = None
    pod["spec"]["volumes"] = None
    patched, proxy, _ = inject(pod)
    assert patched["metadata"]["labels"] == {PROXY_UUID_LABEL: proxy.proxy_uuid}
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["meshcp-bootstrap"]


def test_mesh_config_sidecar_resources_win_over_the_injector_defaults() -> None:
    mesh = dataclasses.replace(
        MESH, sidecar_requests=(("cpu", "100m"),), sidecar_limits=(("memory", "128Mi"),)
    )
    pod = deployment_pod()
    candidate = candidate_for(review(pod))
    patch = sidecar_patch(candidate, new_proxy(candidate), TEMPLATE, mesh)
    patched = apply_and_validate(pod, patch.operations)
    (envoy,) = [c for c in patched["spec"]["containers"] if c["name"] == "envoy"]
    assert envoy["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "128Mi"}}
    default = inject(pod)[0]
    (envoy,) = [c for c in default["spec"]["containers"] if c["name"] == "envoy"]
    assert envoy["resources"] == dict(TEMPLATE.resources or {})


def test_a_pod_without_scrape_annotations_is_scraped_at_the_sidecar() -> None:
    pod = deployment_pod()
    del pod["metadata"]["annotations"]  # with probes to record too: both in the one new map
    patched, _, _ = inject(pod)
    annotations = patched["metadata"]["annotations"]
    assert {key: annotations[key] for key in SCRAPE} == SCRAPE
    assert ORIGINAL_PROBES_ANNOTATION in annotations
    envoy = container(patched, "envoy")
    assert envoy["ports"] == [{"name": "meshcp-metrics", "containerPort": 15010, "protocol": "TCP"}]


def test_scrape_annotations_are_added_beside_the_pods_own_annotations() -> None:
    pod = deployment_pod()
    del pod["metadata"]["annotations"]["prometheus.io/scrape"]
    candidate = candidate_for(review(pod))
    operations = sidecar_patch(candidate, new_proxy(candidate), TEMPLATE, MESH).operations
    paths = [op["path"] for op in operations]
    assert "/metadata/annotations/prometheus.io~1scrape" in paths
    patched = apply_and_validate(pod, operations)
    assert patched["metadata"]["annotations"] == {
        **pod["metadata"]["annotations"],
        **SCRAPE,
        ORIGINAL_PROBES_ANNOTATION: patched["metadata"]["annotations"][ORIGINAL_PROBES_ANNOTATION],
    }


def test_an_applications_own_prometheus_annotations_win() -> None:
    # deployment_pod() says `prometheus.io/scrape: "true"` for its own metrics; any one of
    # them means the application chose its scrape target: none is added or changed.
    for own in ({}, {"prometheus.io/port": "9102"}, {"prometheus.io/path": "/metrics"}):
        pod = with_annotations(deployment_pod(), **own)
        patched, _, _ = inject(pod)
        annotations = patched["metadata"]["annotations"]
        prometheus = {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")}
        assert prometheus == {
            k: v for k, v in pod["metadata"]["annotations"].items() if k.startswith("prometheus.io/")
        }
    pod = bare_pod()
    pod["metadata"]["annotations"] = {"prometheus.io/scrape": "false"}  # not even a "false"
    patched, _, _ = inject(pod)
    assert patched["metadata"]["annotations"] == {"prometheus.io/scrape": "false"}
