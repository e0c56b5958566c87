"""A meshed pod's bootstrap volume, written where its sidecar (or, for a proxyless gRPC
pod, its application) reads it.

In a cluster the webhook puts these files in a Secret that the kubelet mounts; the lab has
neither, so it writes the same files (from the injector's own `bootstrap_secret` and
`proxyless_secret`) into the pod's directory, with the modes the Secret volume would give
them; private keys are readable by the user that reads them alone (the sidecar's, or the
proxyless pod's first container's).
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.certs.issuer import Issuer
from meshcp.injector.bootstrap_secret import BootstrapRenderer, bootstrap_secret, proxyless_secret
from meshcp.injector.template import KEY_FILE
from meshcp.lab.pods import PROXY_USER, PlannedPod


async def write_bootstrap_volume(issuer: Issuer, bundle: str, pod: PlannedPod) -> None:
    """The bootstrap volume the webhook would have put in a Secret: bootstrap, xDS client
    certificate and key (readable by the sidecar's user only), and the trust bundle; for a
    proxyless pod, gRPC's bootstrap and its certificate files."""
    if pod.proxyless is not None:
        await _write_proxyless(issuer, bundle, pod)
        return
    sidecar = pod.sidecar
    assert sidecar is not None
    issued = await issuer.issue(xds_client_request(sidecar.proxy))
    renderer = BootstrapRenderer(sidecar.template)
    secret = bootstrap_secret(sidecar.candidate, sidecar.proxy, renderer, issued, bundle)
    directory = Path(sidecar.template.bootstrap_dir)
    owner = (PROXY_USER, PROXY_USER)
    await asyncio.to_thread(_write_secret, directory, secret["data"], {KEY_FILE}, owner)


async def _write_proxyless(issuer: Issuer, bundle: str, pod: PlannedPod) -> None:
    """The workload certificate is issued once, as the injector does at admission: the lab
    re-creates a pod on `lab apply` when it changes, not when its certificate ages."""
    proxyless = pod.proxyless
    assert proxyless is not None
    xds = await issuer.issue(xds_client_request(proxyless.proxy))
    workload = await issuer.issue(workload_request(proxyless.proxy.identity))
    secret = proxyless_secret(
        proxyless.candidate,
        proxyless.proxy,
        proxyless.template,
        xds_certificate=xds,
        workload_certificate=workload,
        trust_bundle=bundle,
        directory=proxyless.directory,
    )
    first = pod.containers[0] if pod.containers else None
    owner = (first.uid, first.gid) if first is not None else (0, 0)
    keys = {"key.pem", "xds-key.pem"}
    await asyncio.to_thread(_write_secret, Path(proxyless.directory), secret["data"], keys, owner)


def _write_secret(directory: Path, data: dict[str, str], keys: set[str], owner: tuple[int, int]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name, encoded in data.items():
        path = directory / name
        private = name in keys
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400 if private else 0o444)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(base64.b64decode(encoded))
        if private:
            os.chown(path, *owner)
