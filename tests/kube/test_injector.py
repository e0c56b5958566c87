"""The injector called by the real API server: deploy/'s MutatingWebhookConfiguration (its rules,
namespaceSelector, failure policy and side effects as written) with its clientConfig pointing
at a running `meshcp inject` on loopback and the caBundle of the injector's serving
certificate. The injector runs with the token of the ServiceAccount deploy/ creates for it,
the controller (which keeps the CA Secret the injector reads) with its own."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcp.injector.app import MUTATE_PATH
from meshcp.injector.template import INIT_CONTAINER, SECRET_PREFIX, SIDECAR_CONTAINER
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.policy.membership import INJECTION_ANNOTATION, PROXY_UUID_LABEL
from tests.kube.conftest import Installed
from tests.kube.meshcp_process import CA_SECRET, MeshcpProcess, controller
from tests.support import eventually, free_port
from tests.support.deploy import _find
from tests.support.kube import ApiServer, write_serving_certificate

WEBHOOK = "meshcp-injector"
#: The bootstrap Secrets the injector creates carry this label.
MANAGED_BY = "app.kubernetes.io/managed-by=meshcp-injector"


def register_webhook(kube: ApiServer, url: str, ca_file: Path) -> None:
    """deploy/'s webhook configuration, called at `url` and trusting `ca_file` (what
    cert-manager's cainjector would write), instead of at the injector's Service."""
    webhook_configuration = copy.deepcopy(_find("MutatingWebhookConfiguration", WEBHOOK))
    del webhook_configuration["metadata"]["annotations"]  # no cert-manager here
    for webhook in webhook_configuration["webhooks"]:
        webhook["clientConfig"] = {"url": url, "caBundle": base64.b64encode(ca_file.read_bytes()).decode()}
    kube.apply([webhook_configuration])


@pytest.fixture
def webhook_cleanup(installed: Installed) -> Iterator[ApiServer]:
    """The API server; the test's webhook configuration is deleted after the test (it would
    refuse the pods of later tests in meshed namespaces)."""
    yield installed.api
    installed.api.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK, "--ignore-not-found")


def namespace(name: str, *, meshed: bool) -> list[dict[str, Any]]:
    """A namespace (in the mesh or not) and the ServiceAccount its pods run as (no
    controller-manager creates `default` here)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {MESH_LABEL: "meshcp"} if meshed else {}},
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": name}},
    ]


def pod(namespace: str, name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}],
        },
    }


def create(kube: ApiServer, obj: dict[str, Any], *args: str) -> dict[str, Any]:
    """`kubectl create` of one object; what the API server stored (or would, with a dry run)."""
    created: dict[str, Any] = json.loads(
        kube.kubectl("create", "-f", "-", "-o", "json", *args, input=json.dumps(obj)).stdout
    )
    return created


def containers(stored: dict[str, Any]) -> tuple[list[str], list[str]]:
    spec = stored["spec"]
    return [c["name"] for c in spec["containers"]], [c["name"] for c in spec.get("initContainers", [])]


def bootstrap_secrets(kube: ApiServer, namespace: str) -> list[str]:
    return [s["metadata"]["name"] for s in kube.get("secrets", "-n", namespace, "-l", MANAGED_BY)["items"]]


async def test_the_api_server_injects_pods_in_meshed_namespaces(
    webhook_cleanup: ApiServer, tmp_path: Path
) -> None:
    kube = webhook_cleanup
    kube.apply(namespace("inject-mesh", meshed=True) + namespace("inject-plain", meshed=False))
    ca_file, cert, key = write_serving_certificate(tmp_path, "injector", ["127.0.0.1"])
    port = free_port()
    controller_kubeconfig = kube.kubeconfig_for("meshcp-system", "meshcp-controller")
    async with (
        controller(controller_kubeconfig, tmp_path / "state"),  # makes or keeps the CA Secret
        MeshcpProcess(
            "inject",
            f"--tls-cert={cert}",
            f"--tls-key={key}",
            f"--address=127.0.0.1:{port}",
            f"--kubeconfig={kube.kubeconfig_for('meshcp-system', 'meshcp-injector')}",
            f"--ca-secret={CA_SECRET}",
            f"--state-dir={tmp_path / 'injector-state'}",
            ready_url=f"https://127.0.0.1:{port}/healthz",
            ca_file=ca_file,
        ) as injector,
    ):
        register_webhook(kube, f"https://127.0.0.1:{port}{MUTATE_PATH}", ca_file)

        meshed = create(kube, pod("inject-mesh", "app-0"))
        assert containers(meshed) == (["app", SIDECAR_CONTAINER], [INIT_CONTAINER]), injector.log
        proxy_uuid = meshed["metadata"]["labels"][PROXY_UUID_LABEL]
        assert bootstrap_secrets(kube, "inject-mesh") == [SECRET_PREFIX + proxy_uuid]

        # A dry run is injected too, but leaves no bootstrap Secret behind (sideEffects:
        # NoneOnDryRun is what the injector promises).
        dry = create(kube, pod("inject-mesh", "app-dry"), "--dry-run=server")
        assert containers(dry) == (["app", SIDECAR_CONTAINER], [INIT_CONTAINER])
        assert bootstrap_secrets(kube, "inject-mesh") == [SECRET_PREFIX + proxy_uuid]

        opted_out = create(kube, pod("inject-mesh", "app-out", {INJECTION_ANNOTATION: "disabled"}))
        assert containers(opted_out) == (["app"], [])

        plain = create(kube, pod("inject-plain", "app-0"))
        assert containers(plain) == (["app"], [])
        assert bootstrap_secrets(kube, "inject-plain") == []
    assert "forbidden" not in injector.final_log.lower(), injector.final_log


def test_failure_policy_refuses_meshed_pods_while_no_injector_answers(
    webhook_cleanup: ApiServer, tmp_path: Path
) -> None:
    kube = webhook_cleanup
    kube.apply(namespace("down-mesh", meshed=True) + namespace("down-plain", meshed=False))
    ca_file, _, _ = write_serving_certificate(tmp_path, "injector", ["127.0.0.1"])
    register_webhook(kube, f"https://127.0.0.1:{free_port()}{MUTATE_PATH}", ca_file)  # nothing listens

    refused = kube.kubectl("create", "-f", "-", input=json.dumps(pod("down-mesh", "app-0")), check=False)
    assert refused.returncode != 0
    assert 'failed calling webhook "sidecar-injector.meshcp.dev"' in refused.stderr
    assert kube.get("pods", "-n", "down-mesh")["items"] == []

    # Namespaces outside the mesh never reach the webhook (its namespaceSelector).
    plain = create(kube, pod("down-plain", "app-0"))
    assert containers(plain) == (["app"], [])


def webhook_ca_bundles(kube: ApiServer) -> list[str]:
    stored = kube.get("mutatingwebhookconfiguration", WEBHOOK)
    return [w["clientConfig"].get("caBundle", "") for w in stored["webhooks"]]


async def test_the_injector_writes_its_webhook_ca_bundle(webhook_cleanup: ApiServer, tmp_path: Path) -> None:
    """`meshcp inject --webhook-config` fills in the caBundle of a webhook configuration that
    has none (as OSM's injector did, so no cert-manager cainjector is needed), with the
    token and the generated RBAC deploy/ gives it; the API server then calls it. When its
    serving certificate is replaced by one from another CA, it writes the new CA."""
    kube = webhook_cleanup
    kube.apply(namespace("cabundle-mesh", meshed=True))
    certs = tmp_path / "webhook"
    certs.mkdir()
    ca_file, cert, key = write_serving_certificate(certs, "injector", ["127.0.0.1"])
    port = free_port()
    url = f"https://127.0.0.1:{port}{MUTATE_PATH}"
    register_webhook(kube, url, ca_file)
    empty = kube.get("mutatingwebhookconfiguration", WEBHOOK)
    for webhook in empty["webhooks"]:
        webhook["clientConfig"] = {"url": url}  # no caBundle at all
    kube.kubectl("replace", "-f", "-", input=json.dumps(empty))
    assert webhook_ca_bundles(kube) == [""]

    controller_kubeconfig = kube.kubeconfig_for("meshcp-system", "meshcp-controller")
    async with (
        controller(controller_kubeconfig, tmp_path / "state"),
        MeshcpProcess(
            "inject",
            f"--tls-cert={cert}",
            f"--tls-key={key}",
            f"--address=127.0.0.1:{port}",
            f"--kubeconfig={kube.kubeconfig_for('meshcp-system', 'meshcp-injector')}",
            f"--ca-secret={CA_SECRET}",
            f"--state-dir={tmp_path / 'injector-state'}",
            f"--webhook-config={WEBHOOK}",
            f"--webhook-ca={ca_file}",
            ready_url=f"https://127.0.0.1:{port}/healthz",
            ca_file=ca_file,
        ) as injector,
    ):

        def expected() -> list[str]:
            return [base64.b64encode(ca_file.read_bytes()).decode()]

        async def written() -> bool:
            return webhook_ca_bundles(kube) == expected()

        what = "the injector to write the caBundle"
        await eventually(written, timeout=30, what=what, details=lambda: injector.log)
        meshed = create(kube, pod("cabundle-mesh", "app-0"))
        assert containers(meshed) == (["app", SIDECAR_CONTAINER], [INIT_CONTAINER]), injector.log

        # A new serving certificate from a new CA: the bundle follows it.
        old = expected()
        write_serving_certificate(certs, "injector", ["127.0.0.1"])
        assert expected() != old
        what = "the injector to write the new CA"
        await eventually(written, timeout=30, what=what, details=lambda: injector.log)
        again = create(kube, pod("cabundle-mesh", "app-1"))
        assert containers(again) == (["app", SIDECAR_CONTAINER], [INIT_CONTAINER]), injector.log
    assert "forbidden" not in injector.final_log.lower(), injector.final_log
