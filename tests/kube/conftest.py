"""One real Kubernetes API server (etcd + kube-apiserver, tests/support/kube.py) for the whole
test session, shared by every test in tests/kube/: each test works in namespaces of its own.

`installed` is meshcp installed into it from deploy/ with kubectl, as deploy/README.md says:
the Helm chart's default render (scripts/render-deploy; tests/test_helm_chart.py fails when
deploy/ is not a fresh one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.deploy import DEPLOY
from tests.support.kube import ApiServer

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here needs the binaries scripts/build-kube builds: marked `built`, so that
    scripts/test runs them once the build (in the background meanwhile) is done. The hook sees
    the whole session's items; only this directory's are marked."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.built)


#: Stand-ins for cert-manager's CustomResourceDefinitions, which no package registry here
#: ships: the group, versions and kinds deploy/ uses, with a schema that keeps any field. So
#: the API server accepts deploy/'s Issuers and Certificates without checking their fields
#: (tests/test_deploy_wiring.py checks how they are wired; no cert-manager runs here), and
#: the controller's CertificateRequests can be created (tests/kube/test_least_privilege.py).
CERT_MANAGER_KINDS = (
    ("Issuer", "issuers"),
    ("Certificate", "certificates"),
    ("CertificateRequest", "certificaterequests"),
)


def cert_manager_stand_ins() -> list[dict[str, object]]:
    return [
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.cert-manager.io"},
            "spec": {
                "group": "cert-manager.io",
                "scope": "Namespaced",
                "names": {
                    "kind": kind,
                    "plural": plural,
                    "singular": kind.lower(),
                    "listKind": f"{kind}List",
                },
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
        for kind, plural in CERT_MANAGER_KINDS
    ]


@dataclass(frozen=True)
class Installed:
    """What `kubectl apply -f deploy/` printed, on the API server it applied to."""

    api: ApiServer
    output: str


@pytest.fixture(scope="session")
def kube() -> Iterator[ApiServer]:
    """The running API server; `kube.admin_kubeconfig` is a superuser's kubeconfig."""
    with ApiServer() as api:
        yield api


@pytest.fixture(scope="session")
def installed(kube: ApiServer) -> Installed:
    """deploy/ applied with kubectl, in deploy/README.md's order (the namespace and the
    MeshConfig CRD first, then everything), after cert-manager's CRDs (stand-ins).

    Then the two objects that send the API server to meshcp's pods are deleted: the
    MutatingWebhookConfiguration (its `failurePolicy: Fail` would refuse every pod in a
    meshed namespace, since no injector pod runs here) and the TrafficMetrics APIService
    (unavailable without the controller's pod, it would put errors into every discovery).
    Tests that need them register their own, pointing at processes they run.
    """
    kube.apply(cert_manager_stand_ins())
    kube.kubectl(
        "wait",
        "--for=condition=established",
        "crd/issuers.cert-manager.io",
        "crd/certificates.cert-manager.io",
        "crd/certificaterequests.cert-manager.io",
    )
    kube.kubectl("apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(DEPLOY / "meshconfig-crd.yaml"))
    kube.kubectl("wait", "--for=condition=established", "crd/meshconfigs.config.meshcp.dev")
    output = kube.kubectl("apply", "-f", str(DEPLOY)).stdout
    kube.kubectl(
        "delete", "mutatingwebhookconfiguration/meshcp-injector", "apiservice/v1alpha1.metrics.smi-spec.io"
    )
    return Installed(kube, output)
