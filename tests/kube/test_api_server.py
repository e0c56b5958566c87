"""The API server the Kubernetes tests run against is a real one, set up as a cluster's is:
the version scripts/build-kube built, TLS with a certificate the test made, token
authentication, RBAC authorization, ServiceAccount tokens it signs itself."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.kube import ADMIN_USER, ApiServer, kubernetes_version, write_kubeconfig


def test_the_built_version_serves_over_tls_with_the_test_ca(kube: ApiServer) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == kubernetes_version()
    assert version["clientVersion"]["gitVersion"] == kubernetes_version()


def test_the_admin_token_is_a_superuser(kube: ApiServer) -> None:
    review = json.loads(kube.kubectl("auth", "whoami", "-o", "json").stdout)
    assert review["status"]["userInfo"]["username"] == ADMIN_USER
    assert "system:masters" in review["status"]["userInfo"]["groups"]
    assert kube.kubectl("auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "yes"


def test_an_unknown_token_is_not_authenticated(kube: ApiServer, tmp_path: Path) -> None:
    stranger = write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.ca_file, "not-a-token", "stranger")
    result = kube.kubectl("get", "namespaces", kubeconfig=stranger, check=False)
    assert result.returncode != 0
    assert "You must be logged in to the server" in result.stderr  # 401


def test_anonymous_requests_reach_only_what_rbac_allows_them(kube: ApiServer) -> None:
    context = ssl.create_default_context(cafile=str(kube.ca_file))
    with urllib.request.urlopen(f"{kube.url}/readyz", context=context, timeout=5) as reply:
        assert reply.status == 200  # system:public-info-viewer
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{kube.url}/api/v1/namespaces", context=context, timeout=5)
    denied.value.close()
    assert denied.value.code == 403


def test_a_service_account_has_only_what_rbac_grants_it(kube: ApiServer) -> None:
    kube.kubectl("create", "namespace", "rbac-check")
    kube.kubectl("create", "serviceaccount", "reader", "-n", "rbac-check")
    reader = kube.kubeconfig_for("rbac-check", "reader")
    denied = kube.kubectl("get", "pods", "-n", "rbac-check", kubeconfig=reader, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    assert "system:serviceaccount:rbac-check:reader" in denied.stderr

    kube.kubectl("create", "role", "pod-reader", "-n", "rbac-check", "--verb=list", "--resource=pods")
    kube.kubectl(
        "create", "rolebinding", "reader", "-n", "rbac-check", "--role=pod-reader",
        "--serviceaccount=rbac-check:reader",
    )  # fmt: skip
    allowed = kube.kubectl("get", "pods", "-n", "rbac-check", kubeconfig=reader, check=False)
    assert allowed.returncode == 0, allowed.stderr
    still_denied = kube.kubectl("get", "secrets", "-n", "rbac-check", kubeconfig=reader, check=False)
    assert still_denied.returncode != 0


def test_server_side_validation_rejects_what_the_schema_does_not_allow(kube: ApiServer) -> None:
    kube.kubectl("create", "namespace", "validation-check")
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "bad", "namespace": "validation-check"},
        "spec": {"ports": [{"port": 80, "protocoll": "TCP"}]},
    }
    result = kube.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.ports[0].protocoll"' in result.stderr
