"""Proxyless gRPC pods at admission: `meshcp.dev/proxyless: grpc` gets no sidecar and no
iptables, but gRPC's xDS bootstrap and certificates from a Secret mounted into every
container; any other value is refused with a clear message."""

from __future__ import annotations

import base64
import json
import ssl
from typing import Any

from cryptography import x509

from meshcp.certs import InternalCA, ProxyIdentity
from meshcp.certs.pem import load_certificates
from meshcp.injector.decision import Candidate, Deny, Skip
from meshcp.injector.pod_patch import proxyless_patch
from meshcp.policy.membership import PROXY_UUID_LABEL
from tests.injector.conftest import FakeApi, RunningInjector
from tests.injector.injection import candidate_for, decision_for, new_proxy, with_annotations
from tests.injector.reviews import MESH_NAMESPACE, apply_and_validate, deployment_pod, patch_of, review
from tests.injector.test_server import post

GRPC = {"meshcp.dev/proxyless": "grpc"}


def proxyless_pod() -> dict[str, Any]:
    return with_annotations(deployment_pod(), **GRPC)


def test_the_annotation_makes_a_proxyless_candidate_and_a_bad_value_is_refused() -> None:
    decision = decision_for(proxyless_pod())
    assert isinstance(decision, Candidate) and decision.proxyless
    bad = decision_for(with_annotations(deployment_pod(), **{"meshcp.dev/proxyless": "yes"}))
    assert isinstance(bad, Deny)
    assert bad.message == "pod annotation meshcp.dev/proxyless='yes': must be 'grpc' (a proxyless gRPC pod)"


def test_the_patch_mounts_the_secret_into_every_container_and_adds_no_sidecar() -> None:
    pod = proxyless_pod()
    pod["spec"]["containers"][1]["env"] = [{"name": "GRPC_XDS_BOOTSTRAP", "value": "/own.json"}]
    candidate = candidate_for(review(pod))
    proxy = new_proxy(candidate)
    patched = apply_and_validate(pod, proxyless_patch(candidate, proxy).operations)
    spec = patched["spec"]
    assert [c["name"] for c in spec["containers"]] == ["bookstore", "log-shipper"]
    assert [c["name"] for c in spec["initContainers"]] == ["migrate"]  # no iptables
    for container in spec["containers"] + spec["initContainers"]:
        assert {"name": "meshcp-grpc", "mountPath": "/etc/meshcp/grpc", "readOnly": True} in container[
            "volumeMounts"
        ]
    env = {c["name"]: {e["name"]: e.get("value") for e in c["env"]} for c in spec["containers"]}
    assert env["bookstore"]["GRPC_XDS_BOOTSTRAP"] == "/etc/meshcp/grpc/bootstrap.json"
    assert env["log-shipper"]["GRPC_XDS_BOOTSTRAP"] == "/own.json"  # its own wins
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["meshcp-grpc"]["secret"]["secretName"] == f"meshcp-bootstrap-{proxy.proxy_uuid}"
    assert patched["metadata"]["labels"][PROXY_UUID_LABEL] == proxy.proxy_uuid
    assert patched["metadata"]["annotations"] == pod["metadata"]["annotations"]  # no scrape, no probes
    # A reinvoked webhook leaves the prepared pod alone.
    again = decision_for(patched)
    assert isinstance(again, Skip)
    # Mounted elsewhere (meshcp lab: a directory per pod), gRPC is pointed there.
    elsewhere = apply_and_validate(pod, proxyless_patch(candidate, proxy, directory="/lab/p").operations)
    (app, *_) = elsewhere["spec"]["containers"]
    assert {"name": "meshcp-grpc", "mountPath": "/lab/p", "readOnly": True} in app["volumeMounts"]
    assert {"name": "GRPC_XDS_BOOTSTRAP", "value": "/lab/p/bootstrap.json"} in app["env"]


async def test_admission_creates_the_grpc_bootstrap_secret(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi, ca: InternalCA
) -> None:
    pod = proxyless_pod()
    status, answer = await post(injector.url, client_tls, review(pod))
    assert status == 200 and answer["response"]["allowed"] is True
    patched = apply_and_validate(pod, patch_of(answer))
    proxy_uuid = patched["metadata"]["labels"][PROXY_UUID_LABEL]
    secret = api.secrets(MESH_NAMESPACE)[f"meshcp-bootstrap-{proxy_uuid}"]
    # The labels the controller's collector and proxyless renewer select it by.
    assert secret["metadata"]["labels"] == {
        PROXY_UUID_LABEL: proxy_uuid,
        "app.kubernetes.io/managed-by": "meshcp-injector",
        "meshcp.dev/proxyless": "grpc",
    }
    files = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    config = json.loads(files["bootstrap.json"])
    proxy = ProxyIdentity.parse(config["node"]["id"])
    assert proxy.proxy_uuid == proxy_uuid and str(proxy.identity) == "bookstore/bookstore"
    assert config["node"]["metadata"]["meshcp.dev/proxyless"] == "grpc"
    assert config["xds_servers"][0]["server_uri"] == "meshcp-controller.meshcp-system.svc:15128"
    watcher = config["certificate_providers"]["meshcp"]["config"]
    assert watcher["certificate_file"] == "/etc/meshcp/grpc/cert.pem"
    workload = load_certificates(files["cert.pem"])[0]
    sans = workload.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/bookstore/sa/bookstore"
    ]
    xds = load_certificates(files["xds-cert.pem"])[0]
    xds_sans = xds.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert xds_sans.get_values_for_type(x509.DNSName) == [proxy.name]
    assert files["ca.pem"] == files["xds-ca.pem"] == await ca.trust_bundle()
    assert injector.issuer.issued == 2


async def test_a_malformed_annotation_is_an_admission_error(
    injector: RunningInjector, client_tls: ssl.SSLContext
) -> None:
    pod = with_annotations(deployment_pod(), **{"meshcp.dev/proxyless": "envoy"})
    status, answer = await post(injector.url, client_tls, review(pod))
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert "meshcp.dev/proxyless='envoy': must be 'grpc'" in answer["response"]["status"]["message"]
