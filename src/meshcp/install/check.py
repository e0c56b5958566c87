"""`meshcp check`: is meshcp installed and working, one check per line, as `linkerd check`
and `osm check` report. `--pre`: could it be installed here.

Each check asks the API server directly (no controller needed): reachable, the namespace,
every CRD established and serving its version, each ServiceAccount's permissions as the
API server's own authorizer decides them (SubjectAccessReview of every rule the chart
binds), the Deployments available, and the webhook calling a Service that has ready
endpoints with a caBundle that is a valid certificate; and, through the API server's pod
proxy, each ready controller replica: how many proxies are connected and in sync. A check
that cannot run because the API is unreachable says so instead of failing for the same
reason again.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from cryptography import x509

from meshcp.install.client import Api, ApiCallError
from meshcp.install.kinds import kind_of, object_path

Manifest = dict[str, Any]
#: The controller's Deployment: its pods are asked whether the proxies are in sync.
CONTROLLER = "meshcp-controller"
#: The oldest Kubernetes the chart supports (its Chart.yaml `kubeVersion`).
MINIMUM_MINOR = 28


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # ok | fail | skipped
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


class _Failed(Exception):
    """What a check found wrong (its detail)."""


async def _run(name: str, body: Callable[[], Awaitable[str]]) -> Check:
    try:
        return Check(name, "ok", await body())
    except _Failed as failure:
        return Check(name, "fail", str(failure))
    except ApiCallError as error:
        return Check(name, "fail", str(error))


def _find(documents: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in documents if d["kind"] == kind]


async def _version(api: Api) -> str:
    answer = await api.get("/version", "GET /version")
    return str(answer.body.get("gitVersion", "unknown version"))


async def _namespace(api: Api, documents: list[Manifest]) -> str:
    namespaces = [d["metadata"]["name"] for d in _find(documents, "Namespace")]
    for name in namespaces:
        if (await api.get(f"/api/v1/namespaces/{name}", f"namespace {name}", ok_missing=True)).status == 404:
            raise _Failed(f"namespace {name} does not exist")
    return ", ".join(namespaces)


async def _crds(api: Api, documents: list[Manifest]) -> str:
    problems = []
    crds = _find(documents, "CustomResourceDefinition")
    for crd in crds:
        name = crd["metadata"]["name"]
        answer = await api.get(object_path(crd), f"crd {name}", ok_missing=True)
        if answer.status == 404:
            problems.append(f"{name} is not installed")
            continue
        conditions = answer.body.get("status", {}).get("conditions", [])
        if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            problems.append(f"{name} is not established")
        served = {v["name"] for v in answer.body.get("spec", {}).get("versions", []) if v.get("served")}
        wanted = {v["name"] for v in crd["spec"]["versions"] if v.get("served")}
        if not wanted <= served:
            problems.append(f"{name} does not serve {', '.join(sorted(wanted - served))}")
    if problems:
        raise _Failed("; ".join(problems))
    return f"{len(crds)} served"


def _grants(documents: list[Manifest], account: Manifest) -> list[tuple[str, dict[str, str]]]:
    """(where, resourceAttributes) of every verb the chart's bindings give `account`."""
    name = account["metadata"]["name"]
    roles = {(d["kind"], d["metadata"]["name"]): d for d in documents if d["kind"] in ("Role", "ClusterRole")}
    grants = []
    for binding in documents:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = binding.get("subjects", [])
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == name for s in subjects):
            continue
        role = roles.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
        if role is None:
            continue
        where = binding["metadata"].get("namespace", "")
        for rule in role.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        for object_name in rule.get("resourceNames") or [""]:
                            grants.append(
                                (
                                    where,
                                    {
                                        "namespace": where,
                                        "group": group,
                                        "resource": resource,
                                        "verb": verb,
                                        "name": object_name,
                                    },
                                )
                            )
    return grants


async def _rbac(api: Api, documents: list[Manifest], account: Manifest) -> str:
    namespace, name = account["metadata"]["namespace"], account["metadata"]["name"]
    user = f"system:serviceaccount:{namespace}:{name}"
    grants = _grants(documents, account)
    refused = []
    for where, attributes in grants:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": {k: v for k, v in attributes.items() if v},
            },
        }
        answer = await api.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews", review, "create subjectaccessreview"
        )
        if not answer.body.get("status", {}).get("allowed"):
            target = attributes["resource"] + (f"/{attributes['name']}" if attributes["name"] else "")
            group = f".{attributes['group']}" if attributes["group"] else ""
            refused.append(
                f"{attributes['verb']} {target}{group} ({'in ' + where if where else 'cluster-wide'})"
            )
    if refused:
        shown = ", ".join(refused[:4]) + (f" and {len(refused) - 4} more" if len(refused) > 4 else "")
        raise _Failed(f"{name} may not {shown}")
    return f"{len(grants)} permissions granted"


async def _available(api: Api, deployment: Manifest) -> str:
    namespace, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
    answer = await api.get(object_path(deployment), f"deployment {name}", ok_missing=True)
    if answer.status == 404:
        raise _Failed(f"deployment {namespace}/{name} does not exist")
    wanted = answer.body.get("spec", {}).get("replicas", 1)
    status = answer.body.get("status", {})
    available = status.get("availableReplicas", 0)
    if available < 1:
        why = "no pod of it is ready" if status.get("replicas") else "no pod of it exists"
        raise _Failed(
            f"deployment {namespace}/{name} has {available} of {wanted} replicas available ({why}; "
            f"kubectl -n {namespace} describe deployment/{name})"
        )
    return f"{available} of {wanted} replicas available"


async def _webhook_service(api: Api, webhook: Manifest) -> str:
    name = webhook["metadata"]["name"]
    answer = await api.get(object_path(webhook), f"mutatingwebhookconfiguration {name}", ok_missing=True)
    if answer.status == 404:
        raise _Failed(f"mutatingwebhookconfiguration {name} does not exist")
    found = []
    for hook in answer.body.get("webhooks", []):
        service = hook.get("clientConfig", {}).get("service")
        if service is None:
            found.append(f"{hook.get('name')} calls a URL")
            continue
        namespace, service_name = service["namespace"], service["name"]
        if (
            await api.get(
                f"/api/v1/namespaces/{namespace}/services/{service_name}", "service", ok_missing=True
            )
        ).status == 404:
            raise _Failed(
                f"{hook.get('name')} calls service {namespace}/{service_name}, which does not exist"
            )
        slices = await api.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            f"?labelSelector=kubernetes.io/service-name%3D{service_name}",
            "list endpointslices",
        )
        ready = [
            endpoint
            for item in slices.body.get("items", [])
            for endpoint in item.get("endpoints") or []
            if endpoint.get("conditions", {}).get("ready", True)
        ]
        if not ready:
            raise _Failed(
                f"{hook.get('name')} calls service {namespace}/{service_name}, which has no ready endpoints"
            )
        found.append(f"service {namespace}/{service_name}: {len(ready)} ready endpoint(s)")
    return "; ".join(found)


async def _webhook_ca(api: Api, webhook: Manifest) -> str:
    name = webhook["metadata"]["name"]
    answer = await api.get(object_path(webhook), f"mutatingwebhookconfiguration {name}", ok_missing=True)
    if answer.status == 404:
        raise _Failed(f"mutatingwebhookconfiguration {name} does not exist")
    now = datetime.datetime.now(datetime.UTC)
    for hook in answer.body.get("webhooks", []):
        bundle = hook.get("clientConfig", {}).get("caBundle", "")
        if not bundle:
            raise _Failed(f"{hook.get('name')} has no caBundle (is cert-manager's cainjector running?)")
        try:
            certificates = x509.load_pem_x509_certificates(base64.b64decode(bundle))
        except ValueError as error:
            raise _Failed(f"{hook.get('name')}: caBundle is not PEM certificates ({error})") from None
        for certificate in certificates:
            if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
                raise _Failed(
                    f"{hook.get('name')}: caBundle certificate {certificate.subject.rfc4514_string()} "
                    f"is not valid now (until {certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
                )
    return "valid"


def _api_port(deployment: Manifest) -> int:
    """The controller's HTTPS port (`api`): the one port the chart's NetworkPolicy admits
    from anywhere, so the API server's pod proxy can reach it where the policy applies."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            if port.get("name") == "api":
                return int(port["containerPort"])
    raise _Failed(f"deployment {deployment['metadata']['name']} has no port named api")


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return bool(pod.get("status", {}).get("podIP")) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def _problem_line(entry: dict[str, Any]) -> str:
    who = entry.get("pod") or entry.get("node_id") or "?"
    message = f" ({entry['message']})" if entry.get("message") else ""
    return f"{who} {entry.get('type')} {str(entry.get('state', '')).lower()}{message}"


async def _proxies_in_sync(api: Api, controller: Manifest, limit: int) -> str:
    """Every ready controller pod's `/sync` through the API server's pod proxy, summed: a
    proxy streams from one replica only, so every replica is asked.

    Why the pod proxy and `/sync` on the HTTPS listener: the debug listener answers on the
    pod's loopback only, which the API server cannot reach, and a Service proxy would ask
    one replica chosen at random."""
    limit = max(0, limit)
    namespace = controller["metadata"]["namespace"]
    labels = controller["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{key}%3D{value}" for key, value in sorted(labels.items()))
    pods = await api.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}", "list pods")
    ready = [pod for pod in pods.body.get("items", []) if _ready(pod)]
    if not ready:
        shown = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        raise _Failed(
            f"no {controller['metadata']['name']} pod is ready to ask "
            f"(kubectl -n {namespace} get pods -l {shown})"
        )
    port = _api_port(controller)
    connected = in_sync = total = 0
    problems: list[str] = []
    for pod in ready:
        name = pod["metadata"]["name"]
        answer = await api.get(
            f"/api/v1/namespaces/{namespace}/pods/https:{name}:{port}/proxy/sync?limit={limit}",
            f"GET /sync of pod {namespace}/{name}",
        )
        body = answer.body
        if not isinstance(body.get("connected"), int) or not isinstance(body.get("in_sync"), int):
            raise _Failed(f"pod {namespace}/{name}: /sync did not answer a summary (is it meshcp?)")
        connected += body["connected"]
        in_sync += body["in_sync"]
        total += int(body.get("not_in_sync_total", 0))
        problems += [_problem_line(entry) for entry in body.get("not_in_sync", [])]
    counts = f"{connected} proxies connected, {in_sync} in sync ({len(ready)} controller pod(s) asked)"
    if in_sync < connected:
        shown = "; ".join(problems[:limit])
        more = f" and {total - min(len(problems), limit)} more" if total > min(len(problems), limit) else ""
        raise _Failed(f"{counts}; not in sync: {shown}{more}")
    return counts


async def check(api: Api, documents: list[Manifest], limit: int = 5) -> list[Check]:
    """Every check of an installation described by `documents`."""
    reachable = await _run("Kubernetes API reachable", partial(_version, api))
    checks = [reachable]
    names = ["namespace exists", "CRDs installed and served"]
    accounts = _find(documents, "ServiceAccount")
    deployments = _find(documents, "Deployment")
    webhooks = _find(documents, "MutatingWebhookConfiguration")
    names += [f"RBAC of {a['metadata']['name']} in place" for a in accounts]
    names += [f"{d['metadata']['name']} Deployment available" for d in deployments]
    names += [f"webhook {w['metadata']['name']} has a Service with ready endpoints" for w in webhooks]
    names += [f"webhook {w['metadata']['name']} caBundle valid" for w in webhooks]
    controllers = [d for d in deployments if d["metadata"]["name"] == CONTROLLER]
    names += ["proxies connected and in sync" for _ in controllers]
    if reachable.status != "ok":
        return checks + [Check(name, "skipped", "the API is not reachable") for name in names]
    checks.append(await _run("namespace exists", partial(_namespace, api, documents)))
    checks.append(await _run("CRDs installed and served", partial(_crds, api, documents)))
    for account in accounts:
        name = account["metadata"]["name"]
        checks.append(await _run(f"RBAC of {name} in place", partial(_rbac, api, documents, account)))
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        checks.append(await _run(f"{name} Deployment available", partial(_available, api, deployment)))
    for webhook in webhooks:
        name = webhook["metadata"]["name"]
        service = f"webhook {name} has a Service with ready endpoints"
        checks.append(await _run(service, partial(_webhook_service, api, webhook)))
        checks.append(await _run(f"webhook {name} caBundle valid", partial(_webhook_ca, api, webhook)))
    for controller in controllers:
        checks.append(
            await _run("proxies connected and in sync", partial(_proxies_in_sync, api, controller, limit))
        )
    return checks


async def _minimum_version(api: Api) -> str:
    answer = await api.get("/version", "GET /version")
    minor_text = "".join(c for c in str(answer.body.get("minor", "")) if c.isdigit())
    major, minor = str(answer.body.get("major", "")), int(minor_text or 0)
    if major != "1" or minor < MINIMUM_MINOR:
        raise _Failed(f"Kubernetes {major}.{minor} is older than 1.{MINIMUM_MINOR}")
    return f"{major}.{minor}"


async def _may_install(api: Api, documents: list[Manifest]) -> str:
    """The caller may create every kind install creates (SelfSubjectAccessReview)."""
    refused = []
    seen = set()
    for document in documents:
        kind = kind_of(document)
        namespace = document["metadata"].get("namespace", "")
        key = (kind.group, kind.plural, namespace)
        if key in seen:
            continue
        seen.add(key)
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    k: v
                    for k, v in {
                        "namespace": namespace,
                        "group": kind.group,
                        "resource": kind.plural,
                        "verb": "create",
                    }.items()
                    if v
                }
            },
        }
        answer = await api.create(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review, "create selfsubjectaccessreview"
        )
        if not answer.body.get("status", {}).get("allowed"):
            refused.append(kind.plural + (f".{kind.group}" if kind.group else ""))
    if refused:
        raise _Failed(f"you may not create {', '.join(refused)}")
    return f"may create all {len(seen)} kinds"


async def _cert_manager(api: Api) -> str:
    missing = []
    for plural in ("issuers", "certificates"):
        name = f"{plural}.cert-manager.io"
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        if (await api.get(path, f"crd {name}", ok_missing=True)).status == 404:
            missing.append(name)
    if missing:
        raise _Failed(
            f"cert-manager is not installed ({', '.join(missing)} missing; deploy/README.md, Requirements)"
        )
    return "installed"


async def check_pre(api: Api, documents: list[Manifest]) -> list[Check]:
    """Could meshcp be installed: reachable, new enough, allowed, cert-manager present."""
    reachable = await _run("Kubernetes API reachable", partial(_version, api))
    names = ["Kubernetes version supported", "permission to install", "cert-manager installed"]
    if reachable.status != "ok":
        return [reachable] + [Check(name, "skipped", "the API is not reachable") for name in names]
    return [
        reachable,
        await _run(names[0], partial(_minimum_version, api)),
        await _run(names[1], partial(_may_install, api, documents)),
        await _run(names[2], partial(_cert_manager, api)),
    ]
