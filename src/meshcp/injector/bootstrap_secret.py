"""The Secret an injected sidecar boots from: Envoy's bootstrap, its xDS client certificate and
key, and the bundle that signs the controller's certificate.

The pod mounts it as its bootstrap volume (see `pod_patch`); `meshcp lab` writes the same
files into a directory instead.

The bootstrap labels every stat with the pod's namespace, service account and name
(`sidecar.bootstrap.stats_config`). A pod named by `generateName` (a Deployment's) has no
name yet when it is admitted: its proxy UUID stands for the name, as the pod carries it in
its `PROXY_UUID_LABEL` label (a join away from the pod's name).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from meshcp.certs.provider import IssuedCertificate
from meshcp.identity import ProxyIdentity
from meshcp.injector import fields
from meshcp.injector.decision import Candidate
from meshcp.injector.probe_rewrite import original_probes
from meshcp.injector.template import (
    BOOTSTRAP_FILE,
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    PROXYLESS_DIR,
    SidecarTemplate,
    secret_name,
)
from meshcp.policy.membership import PROXY_UUID_LABEL
from meshcp.sidecar.bootstrap import XdsTls, as_dict, bootstrap, identity_tags
from meshcp.sidecar.grpc_bootstrap import PROXYLESS_GRPC, PROXYLESS_KEY, ProxylessFiles, grpc_bootstrap
from meshcp.sidecar.probes import probe_resources

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "meshcp-injector"
_STATIC_RESOURCES = "staticResources"
_STATS_CONFIG = "statsConfig"
_STATS_TAGS = "statsTags"


class BootstrapRenderer:
    """Renders sidecar bootstraps as JSON for one template.

    Only the node (id and cluster) and the probe listeners differ between sidecars, and
    converting a whole bootstrap with betterproto's `to_dict` is the costliest step of an
    injection: the shared part is converted once, here. The probe parts are converted only
    for pods with probes, and remembered: the pods of a Deployment all have the same probes.
    Immutable once built (but for that memory, which is the renderer's own).
    """

    def __init__(self, template: SidecarTemplate) -> None:
        tls = XdsTls(
            certificate=f"{template.bootstrap_dir}/{CERT_FILE}",
            private_key=f"{template.bootstrap_dir}/{KEY_FILE}",
            trust_bundle=f"{template.bootstrap_dir}/{CA_FILE}",
            server_name=template.server_name,
        )
        config = bootstrap(
            "",
            "",
            template.xds_host,
            template.xds_port,
            tls=tls,
            namespace="",
            pod="",
            service_account="",
            delta=template.delta_xds,
        )
        self._shared = {key: value for key, value in as_dict(config).items() if key != "node"}
        stats = self._shared[_STATS_CONFIG]
        # The identity tags come first (`stats_config`); they are the per-sidecar part.
        self._shared_tags = stats[_STATS_TAGS][len(_identity_tags("", "", "")) :]
        self._probe_parts = functools.lru_cache(maxsize=256)(_probe_parts)

    def render(
        self,
        node_id: str,
        cluster: str,
        probes: Sequence[Mapping[str, Any]] = (),
        *,
        namespace: str,
        pod: str,
        service_account: str,
    ) -> str:
        """The bootstrap of one sidecar as JSON: `as_dict(bootstrap(node_id, cluster, ...,
        namespace=..., pod=..., service_account=..., probes=probe_resources(probes)))`;
        `probes` are the original-probes annotation's entries."""
        stats = {
            **self._shared[_STATS_CONFIG],
            _STATS_TAGS: [*_identity_tags(namespace, pod, service_account), *self._shared_tags],
        }
        document = {**self._shared, "node": {"id": node_id, "cluster": cluster}, _STATS_CONFIG: stats}
        if probes:
            listeners, clusters = self._probe_parts(json.dumps(probes, sort_keys=True, separators=(",", ":")))
            static = document[_STATIC_RESOURCES]
            document[_STATIC_RESOURCES] = {
                **static,
                "listeners": [*static.get("listeners", ()), *listeners],
                "clusters": [*static.get("clusters", ()), *clusters],
            }
        return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _identity_tags(namespace: str, pod: str, service_account: str) -> list[Any]:
    """The identity tags of `stats_config` as proto3 JSON."""
    tags = identity_tags(namespace=namespace, pod=pod, service_account=service_account)
    return [tag.to_dict() for tag in tags]


def _probe_parts(probes_json: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The probe listeners and clusters as proto3 JSON (shared: never mutate them)."""
    listeners, clusters = probe_resources(json.loads(probes_json)).as_dicts()
    return tuple(listeners), tuple(clusters)


def bootstrap_secret(
    candidate: Candidate,
    proxy: ProxyIdentity,
    renderer: BootstrapRenderer,
    certificate: IssuedCertificate,
    trust_bundle: str,
) -> dict[str, Any]:
    """The Secret the sidecar boots from: Envoy bootstrap (with the listeners serving the
    pod's rewritten probes), xDS client certificate and key, and the bundle that signs the
    controller's certificate.

    Labelled with the proxy UUID (as the pod is) so that secrets of pods that never came to
    exist can be found and collected.
    """
    identity = candidate.identity
    files = {
        BOOTSTRAP_FILE: renderer.render(
            proxy.name,
            f"{identity.service_account}.{identity.namespace}",
            original_probes(candidate.creation.pod),
            namespace=identity.namespace,
            pod=fields.string(candidate.creation.pod["metadata"].get("name")) or proxy.proxy_uuid,
            service_account=identity.service_account,
        ),
        CERT_FILE: certificate.chain_pem,
        KEY_FILE: certificate.private_key_pem,
        CA_FILE: trust_bundle,
    }
    return _secret(proxy, files)


#: A proxyless pod's files: the workload certificate, key and trust bundle gRPC's
#: `file_watcher` reads, and the xDS client certificate, key and the controller's bundle.
PROXYLESS_FILES = ("cert.pem", "key.pem", "ca.pem", "xds-cert.pem", "xds-key.pem", "xds-ca.pem")


def proxyless_secret(
    candidate: Candidate,
    proxy: ProxyIdentity,
    template: SidecarTemplate,
    *,
    xds_certificate: IssuedCertificate,
    workload_certificate: IssuedCertificate,
    trust_bundle: str,
    directory: str = PROXYLESS_DIR,
) -> dict[str, Any]:
    """The Secret a proxyless gRPC pod's containers mount (`pod_patch.proxyless_patch`):
    gRPC's xDS bootstrap (the same document `meshcp bootstrap --proxyless` writes) and the
    files it points at, under `directory` (where the Secret is mounted). `trust_bundle`
    signs both the controller's certificate and the mesh's workloads (the mesh CA's bundle)."""
    identity = candidate.identity
    paths = ProxylessFiles(*(f"{directory}/{name}" for name in PROXYLESS_FILES))
    document = grpc_bootstrap(
        proxy.name,
        f"{identity.namespace}/{identity.service_account}",
        f"{template.xds_host}:{template.xds_port}",
        paths,
        namespace=identity.namespace,
        pod=fields.string(candidate.creation.pod["metadata"].get("name")) or proxy.proxy_uuid,
        service_account=identity.service_account,
    )
    contents = (
        workload_certificate.chain_pem,
        workload_certificate.private_key_pem,
        trust_bundle,
        xds_certificate.chain_pem,
        xds_certificate.private_key_pem,
        trust_bundle,
    )
    files = dict(zip(PROXYLESS_FILES, contents, strict=True))
    files[BOOTSTRAP_FILE] = json.dumps(document, sort_keys=True, separators=(",", ":"))
    # Labelled proxyless too: the controller renews these Secrets' certificates
    # (`sources.proxyless_renewal`), and finds them by their labels.
    return _secret(proxy, files, {PROXYLESS_KEY: PROXYLESS_GRPC})


def _secret(
    proxy: ProxyIdentity, files: Mapping[str, str], labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A bootstrap Secret of `files`, labelled with the proxy UUID (as the pod is) so that
    Secrets of pods that never came to exist can be found and collected, and with `labels`."""
    namespace = proxy.identity.namespace
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(proxy),
            "namespace": namespace,
            "labels": {PROXY_UUID_LABEL: proxy.proxy_uuid, MANAGED_BY_LABEL: MANAGED_BY, **(labels or {})},
        },
        "data": {name: base64.b64encode(text.encode()).decode() for name, text in sorted(files.items())},
    }
