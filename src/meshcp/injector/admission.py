"""Answering one AdmissionReview: decide, name the sidecar, issue its xDS certificate, create
its bootstrap Secret, patch the pod.

The answer is always an AdmissionReview the API server can use: a Kubernetes API or CA
that fails, or does not answer within the deadline, refuses the pod with a message saying
why, rather than leaving the API server to time out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.certs.issuer import Issuer, RetryPolicy
from meshcp.certs.provider import CertificateError
from meshcp.identity import ProxyIdentity
from meshcp.injector.bootstrap_secret import BootstrapRenderer, bootstrap_secret, proxyless_secret
from meshcp.injector.decision import Candidate, Deny, NamespaceInfo, Skip, decide, pod_creation
from meshcp.injector.kube import ClusterError
from meshcp.injector.pod_patch import proxyless_patch, sidecar_patch
from meshcp.injector.review import Review, allowed_response, denied_response
from meshcp.injector.settings import DEFAULT_DEADLINE
from meshcp.injector.template import SidecarTemplate
from meshcp.model.meshconfig import MeshConfig

#: The webhook server's logger: admissions are what it serves.
log = logging.getLogger("meshcp.injector.server")

#: Issuance retries must fit in the deadline: a CA that is down is reported, not waited for.
ISSUE_RETRY = RetryPolicy(attempts=3, initial_delay=0.2, max_delay=1.0, attempt_timeout=3.0)


class Cluster(Protocol):
    """The Kubernetes API as the injector needs it (`kube.KubeCluster`). Methods raise
    `kube.ClusterError` when the API cannot answer."""

    async def namespace(self, name: str) -> NamespaceInfo | None: ...

    async def mesh_config(self, name: str) -> MeshConfig: ...

    async def create_secret(self, secret: Mapping[str, Any]) -> None: ...


class Injector:
    """Answers one AdmissionReview: decides, issues the xDS certificate, creates the Secret.

    `trust_bundle` returns the PEM bundle sidecars trust for the controller's certificate.
    """

    def __init__(
        self,
        cluster: Cluster,
        issuer: Issuer,
        template: SidecarTemplate,
        trust_bundle: Callable[[], Awaitable[str]],
        *,
        trust_domain: str = "cluster.local",
        mesh_config_name: str = "meshcp",
        mesh_name: str | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self._cluster = cluster
        self._issuer = issuer
        self._template = template
        self._bootstrap = BootstrapRenderer(template)
        self._trust_bundle = trust_bundle
        self._trust_domain = trust_domain
        self._mesh_config_name = mesh_config_name
        self._mesh_name = mesh_name
        self._deadline = deadline

    async def admit(self, review: Review) -> tuple[str, dict[str, Any]]:
        """The result label and the AdmissionReview to answer with."""
        creation = pod_creation(review)
        if isinstance(creation, Skip):
            return "skipped", allowed_response(review, reason=creation.reason)
        try:
            async with asyncio.timeout(self._deadline):
                namespace = await self._cluster.namespace(creation.namespace)
                mesh = await self._cluster.mesh_config(self._mesh_config_name)
                if self._mesh_name is not None:  # --mesh-name wins, as in the controller
                    mesh = replace(mesh, mesh_name=self._mesh_name)
                decision = decide(creation, namespace, mesh)
                if not isinstance(decision, Deny):
                    for warning in decision.warnings:
                        log.warning("%s", warning)
                if isinstance(decision, Skip):
                    log.debug("not injecting %s: %s", creation.display_name, decision.reason)
                    return "skipped", allowed_response(
                        review, reason=decision.reason, warnings=decision.warnings
                    )
                if isinstance(decision, Deny):
                    log.info("refusing %s: %s", creation.display_name, decision.message)
                    return "denied", denied_response(review, decision.message, code=decision.code)
                try:
                    proxy = ProxyIdentity(str(uuid.uuid4()), decision.identity, self._trust_domain)
                except ValueError as error:  # a service account name too long for a DNS name
                    message = f"cannot name the sidecar of pod {creation.display_name}: {error}"
                    return "denied", denied_response(review, message)
                return "injected", await self._inject(review, decision, proxy, mesh)
        except (ClusterError, CertificateError) as error:
            message = f"meshcp cannot inject pod {creation.display_name}: {error}"
        except TimeoutError:
            message = (
                f"meshcp cannot inject pod {creation.display_name}: no answer within {self._deadline:g}s"
            )
        log.warning("%s", message)
        return "denied", denied_response(review, message, code=500)

    async def _inject(
        self, review: Review, candidate: Candidate, proxy: ProxyIdentity, mesh: MeshConfig
    ) -> dict[str, Any]:
        if candidate.proxyless:
            return await self._proxyless(review, candidate, proxy)
        patch = sidecar_patch(candidate, proxy, self._template, mesh)
        if not review.dry_run:
            certificate = await self._issuer.issue(xds_client_request(proxy))
            bundle = await self._trust_bundle()
            await self._cluster.create_secret(
                bootstrap_secret(candidate, proxy, self._bootstrap, certificate, bundle)
            )
        log.info(
            "injected sidecar %s into %s%s",
            proxy.proxy_uuid,
            candidate.creation.display_name,
            " (dry run)" if review.dry_run else "",
        )
        return allowed_response(review, patch=patch, warnings=candidate.warnings)

    async def _proxyless(self, review: Review, candidate: Candidate, proxy: ProxyIdentity) -> dict[str, Any]:
        """A proxyless gRPC pod: its Secret holds gRPC's bootstrap, the xDS client
        certificate and the workload certificate of its identity."""
        patch = proxyless_patch(candidate, proxy)
        if not review.dry_run:
            xds = await self._issuer.issue(xds_client_request(proxy))
            workload = await self._issuer.issue(workload_request(candidate.identity, self._trust_domain))
            bundle = await self._trust_bundle()
            await self._cluster.create_secret(
                proxyless_secret(
                    candidate,
                    proxy,
                    self._template,
                    xds_certificate=xds,
                    workload_certificate=workload,
                    trust_bundle=bundle,
                )
            )
        log.info(
            "prepared proxyless gRPC pod %s (node %s)%s",
            candidate.creation.display_name,
            proxy.proxy_uuid,
            " (dry run)" if review.dry_run else "",
        )
        return allowed_response(review, patch=patch, warnings=candidate.warnings)
