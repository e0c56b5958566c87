"""No unused permission: every grant of the roles deploy/ binds to the controller's and the
injector's ServiceAccounts is taken away in turn on the real API server, and the request of
the component that needs it is then refused (403), and allowed again once it is back.

A grant is one verb on one resource of one rule (a rule with two verbs is two grants), in
the cluster (ClusterRole) or in one namespace (Role). Each has a probe: the call the
component makes, through the component's own client where one exists (SecretStore for the
CA Secret, SecretCollector for bootstrap Secrets, ProxylessRenewer for proxyless pods'
Secrets, KubeCluster for the injector, its
webhook configuration's caBundle included), or the
request it sends (the source's list and watch of each kind in RESOURCES, at that kind's
path). The test fails if a grant has no probe (an unused permission, or a new call without
a probe here) or a probe has no grant (a permission deploy/ forgot). The processes
themselves, run with these roles, are tests/kube/test_source.py and test_injector.py.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import pytest
import yaml
from kubernetes_asyncio.client import (
    AdmissionregistrationV1Api,
    ApiClient,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    RbacAuthorizationV1Api,
)
from kubernetes_asyncio.client.rest import ApiException

from meshcp.certs import InternalCA, MemoryStore, cert_manager
from meshcp.certs.kubernetes_store import SecretStore
from meshcp.injector.bootstrap_secret import MANAGED_BY, MANAGED_BY_LABEL
from meshcp.injector.kube import KubeCluster
from meshcp.kube.client import default_api_client
from meshcp.policy.membership import PROXY_UUID_LABEL
from meshcp.sources.bootstrap_secrets import CollectorSettings, SecretCollector
from meshcp.sources.kubernetes import RESOURCES
from meshcp.sources.kubernetes_lease import LeaderElection, LeaseSettings
from meshcp.sources.kubernetes_rbac import LEASE, WEBHOOK_CONFIG
from meshcp.sources.kubernetes_watch import Resource
from meshcp.sources.proxyless_renewal import ProxylessRenewer
from tests.kube.conftest import Installed
from tests.kube.proxyless_pods import proxyless_pod
from tests.support import eventually
from tests.support.kube import ApiServer, write_kubeconfig

SYSTEM = "meshcp-system"
CA_NAME = "meshcp-ca"
WEBHOOKS_GROUP = "admissionregistration.k8s.io"
#: Where probes put the objects they need (events, bootstrap Secrets).
WORK = "least-privilege"
CLUSTER = ""  # the scope of a ClusterRole's grants

#: (scope: "" or a namespace, API group, resource, verb)
Grant = tuple[str, str, str, str]
Probe = Callable[["Clients"], Awaitable[None]]


@dataclass
class Clients:
    """API clients as the admin and as one ServiceAccount, and the server's address."""

    kube: ApiServer
    admin: ApiClient
    account: ApiClient
    token: str


def forbidden(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) is the API's 403."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ApiException) and seen.status == 403:
            return True
        if "403 Forbidden" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Probes of the controller ---------------------------------------------------------------


def source_request(resource: Resource, verb: str) -> Probe:
    """The source's list (one page) or watch of `resource`, at the path it uses."""

    async def probe(clients: Clients) -> None:
        query = {"limit": "1"} if verb == "list" else {"watch": "1", "timeoutSeconds": "1"}
        context = ssl.create_default_context(cafile=str(clients.kube.ca_file))
        headers = {"Authorization": f"Bearer {clients.token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.get(f"{clients.kube.url}{resource.path}", params=query, ssl=context) as reply,
        ):
            if reply.status == 403:
                raise ApiException(status=403, reason="Forbidden")
            # 404: a kind whose CRD is not installed (the source treats it as empty).
            assert reply.status in (200, 404), f"{verb} {resource.path}: {reply.status}"

    return probe


async def post_event(clients: Clients) -> None:
    """What sources.kubernetes_events posts: a Warning next to the object it is about."""
    event: Any = {  # the client sends a dict as it is
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "probe-", "namespace": WORK},
        "involvedObject": {"apiVersion": "v1", "kind": "Service", "namespace": WORK, "name": "web"},
        "reason": "Probe",
        "message": "least-privilege probe",
        "type": "Warning",
    }
    await CoreV1Api(clients.account).create_namespaced_event(WORK, event)


async def collect_orphan(clients: Clients) -> None:
    """The bootstrap-Secret collector, with no grace, over an injector's Secret whose pod is
    gone (made by the admin): it lists Secrets and pods, and deletes that one."""
    orphan = f"probe-{uuid.uuid4().hex[:8]}"
    secret: Any = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": orphan,
            "namespace": WORK,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, PROXY_UUID_LABEL: orphan},
        },
    }
    await CoreV1Api(clients.admin).create_namespaced_secret(WORK, secret)
    collector = SecretCollector(_never, CollectorSettings(grace=0))
    deleted = await collector.collect(CoreV1Api(clients.account))
    assert orphan in {s.name for s in deleted}


async def renew_proxyless(clients: Clients) -> None:
    """The proxyless renewer over a proxyless pod's Secret as the injector makes it (by the
    admin, with a certificate that is due at once): it lists Secrets and pods, and replaces
    that Secret's files (a patch)."""
    name = f"probe-{uuid.uuid4().hex[:8]}"
    core = CoreV1Api(clients.admin)
    ca = await InternalCA.open(MemoryStore())  # any CA: the grants are what is probed
    pod, secret, _ = await proxyless_pod(ca, WORK, name, "probe", validity=datetime.timedelta(seconds=60))
    account: Any = {"metadata": {"name": "probe", "namespace": WORK}}
    with contextlib.suppress(ApiException):  # there from an earlier probe (409)
        await core.create_namespaced_service_account(WORK, account)
    await core.create_namespaced_secret(WORK, cast(Any, secret))
    await core.create_namespaced_pod(WORK, cast(Any, pod))
    try:
        issue = ca.issue
        renewer = ProxylessRenewer(
            _never, issue, "cluster.local", bundle=lambda: "", validity=lambda: datetime.timedelta(hours=1)
        )
        renewed = await renewer.renew(CoreV1Api(clients.account))
        assert secret["metadata"]["name"] in {s.name for s in renewed}
    finally:
        await core.delete_namespaced_pod(name, WORK, grace_period_seconds=0)
        await core.delete_namespaced_secret(secret["metadata"]["name"], WORK)


async def _never() -> ApiClient:
    raise AssertionError("the probes hand the collector its client")


async def _ca_secret(clients: Clients, *, present: bool) -> None:
    """Make the CA Secret exist (with its data, or empty) or not, as the admin."""
    core = CoreV1Api(clients.admin)
    try:
        await core.read_namespaced_secret(CA_NAME, SYSTEM)
        exists = True
    except ApiException as error:
        assert error.status == 404, error
        exists = False
    if exists and not present:
        await core.delete_namespaced_secret(CA_NAME, SYSTEM)
    elif present and not exists:
        body: Any = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CA_NAME, "namespace": SYSTEM}}
        await core.create_namespaced_secret(SYSTEM, body)


async def read_ca(clients: Clients) -> None:
    """Opening the CA: certs.kubernetes_store reads its Secret (controller and injector)."""
    await _ca_secret(clients, present=True)
    await SecretStore(clients.account, SYSTEM, CA_NAME).read("ca.crt")


async def update_ca(clients: Clients) -> None:
    """Changing the CA (a rotation step) once the Secret exists: read, then update."""
    await _ca_secret(clients, present=True)
    await SecretStore(clients.account, SYSTEM, CA_NAME).write("probe", b"1")
    await SecretStore(clients.admin, SYSTEM, CA_NAME).delete("probe")


async def create_ca(clients: Clients) -> None:
    """The first start: no Secret yet, the store creates it."""
    await _ca_secret(clients, present=False)
    await SecretStore(clients.account, SYSTEM, CA_NAME).write("probe", b"1")


def _certificate_request(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{cert_manager.GROUP}/{cert_manager.VERSION}",
        "kind": "CertificateRequest",
        "metadata": {"name": name, "namespace": SYSTEM},
        "spec": {"request": "", "issuerRef": {"name": "meshcp"}},
    }


def certificate_request(verb: str) -> Probe:
    """certs.cert_manager's calls on a CertificateRequest in --cert-manager-namespace:
    create it, poll it, delete it."""

    async def probe(clients: Clients) -> None:
        name = f"probe-{uuid.uuid4().hex[:8]}"
        where = (cert_manager.GROUP, cert_manager.VERSION, SYSTEM, cert_manager.PLURAL)
        body = _certificate_request(name)
        if verb == "create":
            await CustomObjectsApi(clients.account).create_namespaced_custom_object(*where, body)
            await CustomObjectsApi(clients.admin).delete_namespaced_custom_object(*where, name)
            return
        await CustomObjectsApi(clients.admin).create_namespaced_custom_object(*where, body)
        try:
            if verb == "get":
                await CustomObjectsApi(clients.account).get_namespaced_custom_object(*where, name)
            else:
                await CustomObjectsApi(clients.account).delete_namespaced_custom_object(*where, name)
        finally:
            try:
                await CustomObjectsApi(clients.admin).delete_namespaced_custom_object(*where, name)
            except ApiException as error:
                assert error.status == 404, error

    return probe


async def _lease_held_by(clients: Clients, holder: str | None) -> None:
    """As the admin: no Lease (`holder` None), or a fresh one held by `holder`."""
    coordination = CoordinationV1Api(clients.admin)
    try:
        await coordination.delete_namespaced_lease(LEASE, SYSTEM)
    except ApiException as error:
        assert error.status == 404, error
    if holder is not None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": SYSTEM},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": now},
        }
        await coordination.create_namespaced_lease(SYSTEM, body)


def _election(identity: str) -> LeaderElection:
    return LeaderElection(_never, LeaseSettings(SYSTEM, LEASE, identity))


async def create_lease(clients: Clients) -> None:
    """The first replica: no Lease yet, it creates it, holding it."""
    await _lease_held_by(clients, None)
    election = _election("probe")
    await election.attempt(CoordinationV1Api(clients.account))
    assert election.leading


async def read_lease(clients: Clients) -> None:
    """A follower looking at the Lease another replica holds."""
    await _lease_held_by(clients, "another-replica")
    election = _election("probe")
    await election.attempt(CoordinationV1Api(clients.account))
    assert not election.leading and election.holder == "another-replica"


async def renew_lease(clients: Clients) -> None:
    """The leader renewing its Lease (read, then update at that resourceVersion)."""
    await _lease_held_by(clients, "probe")
    election = _election("probe")
    await election.attempt(CoordinationV1Api(clients.account))
    assert election.leading


CONTROLLER_PROBES: dict[Grant, Probe] = {
    **{
        (CLUSTER, r.group, r.plural, verb): source_request(r, verb)
        for r in RESOURCES
        for verb in ("list", "watch")
    },
    (CLUSTER, "", "events", "create"): post_event,
    (CLUSTER, "", "secrets", "list"): collect_orphan,
    (CLUSTER, "", "secrets", "delete"): collect_orphan,
    (CLUSTER, "", "secrets", "patch"): renew_proxyless,
    (SYSTEM, "", "secrets", "get"): read_ca,
    (SYSTEM, "", "secrets", "update"): update_ca,
    (SYSTEM, "", "secrets", "create"): create_ca,
    (SYSTEM, "coordination.k8s.io", "leases", "create"): create_lease,
    (SYSTEM, "coordination.k8s.io", "leases", "get"): read_lease,
    (SYSTEM, "coordination.k8s.io", "leases", "update"): renew_lease,
    **{
        (SYSTEM, cert_manager.GROUP, cert_manager.PLURAL, verb): certificate_request(verb)
        for verb in ("create", "get", "delete")
    },
}


# Probes of the injector -----------------------------------------------------------------


async def read_namespace(clients: Clients) -> None:
    assert await KubeCluster(clients.account).namespace(WORK) is not None


async def read_mesh_config(clients: Clients) -> None:
    await KubeCluster(clients.account).mesh_config("meshcp")


async def _webhook_config(clients: Clients) -> KubeCluster:
    """deploy/'s webhook configuration's name, with one webhook that never applies (its
    namespaceSelector matches nothing), made by the admin if missing; a KubeCluster as the
    account."""
    admission = AdmissionregistrationV1Api(clients.admin)
    try:
        await admission.read_mutating_webhook_configuration(WEBHOOK_CONFIG)
    except ApiException as error:
        assert error.status == 404, error
        body: Any = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_CONFIG},
            "webhooks": [
                {
                    "name": "probe.meshcp.dev",
                    "clientConfig": {"url": "https://127.0.0.1:1/probe"},
                    "namespaceSelector": {"matchLabels": {"meshcp.dev/least-privilege-probe": "never"}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                }
            ],
        }
        await admission.create_mutating_webhook_configuration(body)
    return KubeCluster(clients.account)


async def read_webhook_config(clients: Clients) -> None:
    """`--webhook-config`: reading its caBundle."""
    await (await _webhook_config(clients)).webhook_ca_bundles(WEBHOOK_CONFIG)


async def patch_webhook_config(clients: Clients) -> None:
    """`--webhook-config`: writing its caBundle (read as the admin first)."""
    cluster = await _webhook_config(clients)
    version, bundles = await KubeCluster(clients.admin).webhook_ca_bundles(WEBHOOK_CONFIG)
    bundle = base64.b64encode(clients.kube.ca_file.read_bytes()).decode()
    await cluster.set_webhook_ca_bundle(WEBHOOK_CONFIG, version, len(bundles), bundle)


async def create_bootstrap_secret(clients: Clients) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": WORK}}
    await KubeCluster(clients.account).create_secret(secret)


INJECTOR_PROBES: dict[Grant, Probe] = {
    (CLUSTER, "", "namespaces", "get"): read_namespace,
    (CLUSTER, "config.meshcp.dev", "meshconfigs", "get"): read_mesh_config,
    # The same call lists OSM's MeshConfigs (refused before the API server looks for the
    # kind, which is not installed here).
    (CLUSTER, "config.openservicemesh.io", "meshconfigs", "list"): read_mesh_config,
    (CLUSTER, "", "secrets", "create"): create_bootstrap_secret,
    (CLUSTER, WEBHOOKS_GROUP, "mutatingwebhookconfigurations", "get"): read_webhook_config,
    (CLUSTER, WEBHOOKS_GROUP, "mutatingwebhookconfigurations", "patch"): patch_webhook_config,
    (SYSTEM, "", "secrets", "get"): read_ca,
}


# The roles as installed -----------------------------------------------------------------


@dataclass(frozen=True)
class BoundRole:
    """A (Cluster)Role bound to the account: `scope` "" for a ClusterRoleBinding, else the
    RoleBinding's namespace."""

    kind: str
    name: str
    scope: str
    manifest: dict[str, Any]

    def grants(self) -> set[Grant]:
        return {
            (self.scope, group, resource, verb)
            for rule in self.manifest["rules"]
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule.get("verbs", [])
        }

    def without(self, grant: Grant) -> dict[str, Any]:
        """The manifest with every rule split into one group, resource and verb (names kept),
        and `grant`'s left out."""
        _, group, resource, verb = grant
        rules = [
            {**{k: v for k, v in rule.items() if k not in ("apiGroups", "resources", "verbs")},
             "apiGroups": [g], "resources": [r], "verbs": [v]}
            for rule in self.manifest["rules"]
            for g in rule.get("apiGroups", [])
            for r in rule.get("resources", [])
            for v in rule.get("verbs", [])
            if (g, r, v) != (group, resource, verb)
        ]  # fmt: skip
        return {**copy.deepcopy(self.manifest), "rules": rules}


def bound_roles(kube: ApiServer, account: str) -> list[BoundRole]:
    subject = {"kind": "ServiceAccount", "name": account, "namespace": SYSTEM}
    roles = []
    for binding in kube.get("clusterrolebindings")["items"] + kube.get("rolebindings", "-A")["items"]:
        if subject not in binding.get("subjects", []):
            continue
        namespace = binding["metadata"].get("namespace", CLUSTER)
        kind, name = binding["roleRef"]["kind"], binding["roleRef"]["name"]
        where = ("-n", namespace) if kind == "Role" else ()
        manifest = kube.get(kind.lower(), name, *where)
        manifest = {key: manifest[key] for key in ("apiVersion", "kind", "metadata", "rules")}
        manifest["metadata"] = {
            key: manifest["metadata"][key]
            for key in ("name", "namespace", "labels")
            if key in manifest["metadata"]
        }
        roles.append(BoundRole(kind, name, namespace, manifest))
    return roles


async def replace(admin: ApiClient, role: BoundRole, manifest: Any) -> None:
    rbac = RbacAuthorizationV1Api(admin)
    if role.kind == "ClusterRole":
        await rbac.replace_cluster_role(role.name, manifest)
    else:
        await rbac.replace_namespaced_role(role.name, role.scope, manifest)


async def outcome(probe: Probe, clients: Clients) -> str:
    try:
        await probe(clients)
    except Exception as error:  # anything but a 403 fails the test below
        if forbidden(error):
            return "forbidden"
        raise
    return "allowed"


async def prove_each_grant_needed(
    clients: Clients, roles: list[BoundRole], probes: dict[Grant, Probe]
) -> list[str]:
    """Take each grant away in turn; the probes' outcome with it and without it."""
    granted = set().union(*(role.grants() for role in roles))
    assert granted == probes.keys(), (
        f"granted without a probe (unused?): {sorted(granted - probes.keys())}; "
        f"probed but not granted: {sorted(probes.keys() - granted)}"
    )
    proven = []
    for role in roles:
        for grant in sorted(role.grants()):
            probe = probes[grant]
            assert await outcome(probe, clients) == "allowed", f"{grant} with every grant"
            await replace(clients.admin, role, role.without(grant))
            try:

                async def refused(probe: Probe = probe) -> bool:
                    return await outcome(probe, clients) == "forbidden"

                await eventually(
                    refused, timeout=10, what=f"{grant} refused without {role.kind} {role.name}'s grant"
                )
            finally:
                await replace(clients.admin, role, role.manifest)

            async def allowed(probe: Probe = probe) -> bool:
                return await outcome(probe, clients) == "allowed"

            await eventually(allowed, timeout=10, what=f"{grant} allowed again")
            proven.append(f"{role.kind}/{role.name}: {grant}")
    return proven


@pytest.fixture
async def work(installed: Installed) -> AsyncIterator[tuple[ApiServer, ApiClient]]:
    """The namespace the probes work in, the admin's client, and the CA Secret put back as
    it was afterwards (the probes delete and recreate it)."""
    kube = installed.api
    kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WORK}}])
    saved = kube.kubectl("get", "secret", CA_NAME, "-n", SYSTEM, "-o", "yaml", check=False)
    async with await default_api_client(config_file=str(kube.admin_kubeconfig)) as admin:
        try:
            yield kube, admin
        finally:
            kube.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIG, "--ignore-not-found")
            kube.kubectl("delete", "lease", LEASE, "-n", SYSTEM, "--ignore-not-found")
            kube.kubectl("delete", "secret", CA_NAME, "-n", SYSTEM, "--ignore-not-found")
            if saved.returncode == 0:
                secret = yaml.safe_load(saved.stdout)
                for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
                    secret["metadata"].pop(key, None)
                kube.apply([secret])


@pytest.mark.parametrize(
    ("account", "probes"),
    [("meshcp-controller", CONTROLLER_PROBES), ("meshcp-injector", INJECTOR_PROBES)],
)
async def test_every_grant_is_needed(
    work: tuple[ApiServer, ApiClient], account: str, probes: dict[Grant, Probe]
) -> None:
    kube, admin = work
    token = kube.token(SYSTEM, account)
    kubeconfig = write_kubeconfig(
        kube.directory / f"probe.{account}.kubeconfig", kube.url, kube.ca_file, token, account
    )
    async with await default_api_client(config_file=str(kubeconfig)) as as_account:
        clients = Clients(kube, admin, as_account, token)
        roles = bound_roles(kube, account)
        proven = await prove_each_grant_needed(clients, roles, probes)
    assert len(proven) == len(probes), proven
