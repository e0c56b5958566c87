"""The controller renews proxyless gRPC pods' Secrets on the real API server (`meshcp serve
--source kubernetes` with the controller's ServiceAccount token and deploy/'s generated RBAC):
certificates issued for a short time are replaced before they expire, by new ones for the
same identity and proxy that chain to the mesh's root, and after a root rotation (`meshcp ca
rotate --ca-secret`) the Secret's bundle and certificates follow the new root.

The pods and Secrets are made as the injector makes them (`tests/kube/proxyless_pods.py`),
with certificates of a minute: one exactly as the injector writes it (the CA back-dates by
5 minutes, so by its own dates it is due at once), one annotated as the controller leaves a
Secret it renewed (so it is due ~40 s after it was issued, by the sidecars' rule).
The renewer's write is conditional on the resourceVersion it read, and a follower writes
nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from meshcp.certs import InternalCA, MemoryStore, pem
from meshcp.certs.kubernetes_store import SecretStore
from meshcp.certs.provider import IssuedCertificate
from meshcp.identity import ProxyIdentity
from meshcp.kube.client import default_api_client
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.sources.proxyless_renewal import ISSUED_AT, ProxylessRenewer, ProxylessSecret
from tests.kube.conftest import Installed
from tests.kube.meshcp_process import CA_SECRET, MeshcpProcess, controller
from tests.kube.proxyless_pods import proxyless_pod
from tests.support import eventually

NAMESPACE = "proxyless-renewal"
SERVICE_ACCOUNT = "greeter"
VALIDITY = timedelta(seconds=60)


def files(secret: Any) -> dict[str, str]:
    return {name: base64.b64decode(value).decode() for name, value in (secret.data or {}).items()}


def certificate(secret: Any, name: str = "cert") -> IssuedCertificate:
    held = files(secret)
    return IssuedCertificate.from_pem(held[f"{name}.pem"], held[f"{name}.pem".replace("cert", "key")])


def chains_to(issued: IssuedCertificate, bundle: str) -> bool:
    """Whether `issued` is signed by a root of `bundle`."""
    for root in pem.load_certificates(bundle):
        try:
            issued.certificate.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def names(issued: IssuedCertificate) -> tuple[list[str], list[str]]:
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier), san.get_values_for_type(x509.DNSName)


@pytest.fixture
async def admin(installed: Installed) -> AsyncIterator[ApiClient]:
    kube = installed.api
    namespace = {"name": NAMESPACE, "labels": {MESH_LABEL: "meshcp"}}
    account = {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    kube.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": namespace},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": account},
        ]
    )
    async with await default_api_client(config_file=str(kube.admin_kubeconfig)) as client:
        try:
            yield client
        finally:
            kube.kubectl("delete", "pods,secrets", "--all", "-n", NAMESPACE, "--ignore-not-found")


@pytest.fixture
async def serving(installed: Installed, tmp_path: Path, admin: ApiClient) -> AsyncIterator[MeshcpProcess]:
    kubeconfig = installed.api.kubeconfig_for("meshcp-system", "meshcp-controller")
    async with controller(kubeconfig, tmp_path / "state", "--proxyless-renew-interval=2") as process:
        yield process


async def test_the_controller_renews_proxyless_secrets_and_follows_a_root_rotation(
    installed: Installed, admin: ApiClient, serving: MeshcpProcess
) -> None:
    kube = installed.api
    core = CoreV1Api(admin)
    namespace, name = CA_SECRET.split("/")
    ca = await InternalCA.open(SecretStore(admin, namespace, name), create=False)
    made: dict[str, tuple[ProxyIdentity, IssuedCertificate, IssuedCertificate]] = {}
    for pod_name, annotated in (("as-injected", False), ("renewed-before", True)):
        pod, secret, proxy = await proxyless_pod(ca, NAMESPACE, pod_name, SERVICE_ACCOUNT, validity=VALIDITY)
        if annotated:
            secret["metadata"]["annotations"] = {ISSUED_AT: datetime.now(UTC).isoformat()}
        await core.create_namespaced_secret(NAMESPACE, cast(Any, secret))
        await core.create_namespaced_pod(NAMESPACE, cast(Any, pod))
        stored = await core.read_namespaced_secret(secret["metadata"]["name"], NAMESPACE)
        made[secret["metadata"]["name"]] = (proxy, certificate(stored), certificate(stored, "xds-cert"))

    async def renewed() -> bool:
        for secret_name, (_, workload, _) in made.items():
            stored = await core.read_namespaced_secret(secret_name, NAMESPACE)
            if certificate(stored).serial_number == workload.serial_number:
                return False
        return True

    await eventually(renewed, timeout=90, what="both Secrets renewed", details=lambda: serving.log)
    bundle = await ca.trust_bundle()
    for secret_name, (proxy, old, old_xds) in made.items():
        stored = await core.read_namespaced_secret(secret_name, NAMESPACE)
        new, new_xds = certificate(stored), certificate(stored, "xds-cert")
        issued_at = datetime.fromisoformat(stored.metadata.annotations[ISSUED_AT])
        assert issued_at < old.not_after, f"{secret_name} renewed only after its certificate expired"
        assert chains_to(new, bundle) and chains_to(new_xds, bundle)
        identity = proxy.identity
        assert names(new) == (
            [identity.spiffe_id("cluster.local")],
            [identity.dns_name("cluster.local")],
        )
        assert names(new_xds) == ([], [proxy.name])
        assert new_xds.serial_number != old_xds.serial_number
        held = files(stored)
        assert held["ca.pem"] == held["xds-ca.pem"] == bundle
        assert json.loads(held["bootstrap.json"])["node"]["id"] == proxy.name
        assert f"renewed proxyless Secret {NAMESPACE}/{secret_name}" in serving.log

    rotate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "meshcp", "ca", "rotate", f"--ca-secret={CA_SECRET}",
         f"--kubeconfig={kube.admin_kubeconfig}", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert rotate.returncode == 0, rotate.stdout + rotate.stderr

    async def followed() -> bool:
        await ca.reload()
        if ca.state.previous is not None:
            return False  # the rotation is not finished yet
        bundle = await ca.trust_bundle()
        for secret_name in made:
            stored = await core.read_namespaced_secret(secret_name, NAMESPACE)
            held = files(stored)
            if held["ca.pem"] != bundle or held["xds-ca.pem"] != bundle:
                return False
            if not (
                chains_to(certificate(stored), bundle) and chains_to(certificate(stored, "xds-cert"), bundle)
            ):
                return False
        return True

    await eventually(
        followed, timeout=90, what="the Secrets follow the new root", details=lambda: serving.log
    )
    assert "root rotation finished" in serving.log


async def _never() -> ApiClient:
    raise AssertionError("the test hands the renewer its client")


async def test_a_secret_changed_since_listed_is_left_and_a_follower_writes_nothing(
    installed: Installed, admin: ApiClient
) -> None:
    """The patch is conditional on the resourceVersion read: a Secret changed meanwhile
    answers 409 and keeps the other writer's data (the next pass reads it again). A replica
    that does not lead renews nothing, due or not."""
    core = CoreV1Api(admin)
    ca = await InternalCA.open(MemoryStore())
    pod, secret, _ = await proxyless_pod(ca, NAMESPACE, "conflict", SERVICE_ACCOUNT, validity=VALIDITY)
    await core.create_namespaced_secret(NAMESPACE, cast(Any, secret))
    await core.create_namespaced_pod(NAMESPACE, cast(Any, pod))
    name = secret["metadata"]["name"]

    def renewer(leading: bool) -> ProxylessRenewer:
        return ProxylessRenewer(
            _never,
            ca.issue,
            "cluster.local",
            bundle=lambda: "",
            validity=lambda: timedelta(hours=1),
            leading=lambda: leading,
        )

    assert await renewer(leading=False).renew(core) == []
    stored = await core.read_namespaced_secret(name, NAMESPACE)
    assert files(stored) == {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert ISSUED_AT not in (stored.metadata.annotations or {})

    listed = ProxylessSecret.read(stored, "cluster.local")
    assert listed is not None
    other: Any = {"metadata": {"annotations": {"example.com/touched": "yes"}}}
    await core.patch_namespaced_secret(name, NAMESPACE, other)
    assert not await renewer(leading=True).renew_secret(core, listed, "", "workload certificate due")
    after = await core.read_namespaced_secret(name, NAMESPACE)
    assert certificate(after).serial_number == certificate(stored).serial_number
    assert after.metadata.annotations == {"example.com/touched": "yes"}

    renewed = await renewer(leading=True).renew(core)
    assert name in {s.name for s in renewed}  # (with any other test's Secret that is due)
    final = await core.read_namespaced_secret(name, NAMESPACE)
    assert certificate(final).serial_number != certificate(stored).serial_number
    assert final.metadata.annotations["example.com/touched"] == "yes"
    assert ISSUED_AT in final.metadata.annotations
