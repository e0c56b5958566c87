"""A meshed pod's bootstrap volume, written where its sidecar reads it.

In a cluster the webhook puts these files in a Secret that the kubelet mounts; the lab has
neither, so it writes the same files (from the injector's own `bootstrap_secret`) into the
pod's directory, with the modes the Secret volume would give them.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

from meshcp.certs.issuance import xds_client_request
from meshcp.certs.issuer import Issuer
from meshcp.injector.bootstrap_secret import BootstrapRenderer, bootstrap_secret
from meshcp.injector.template import KEY_FILE
from meshcp.lab.pods import PROXY_USER, PlannedPod


async def write_bootstrap_volume(issuer: Issuer, bundle: str, pod: PlannedPod) -> None:
    """The bootstrap volume the webhook would have put in a Secret: bootstrap, xDS client
    certificate and key (readable by the sidecar's user only), and the trust bundle."""
    sidecar = pod.sidecar
    assert sidecar is not None
    issued = await issuer.issue(xds_client_request(sidecar.proxy))
    renderer = BootstrapRenderer(sidecar.template)
    secret = bootstrap_secret(sidecar.candidate, sidecar.proxy, renderer, issued, bundle)
    directory = Path(sidecar.template.bootstrap_dir)
    await asyncio.to_thread(_write_secret, directory, secret["data"])


def _write_secret(directory: Path, data: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name, encoded in data.items():
        path = directory / name
        private = name == KEY_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400 if private else 0o444)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(base64.b64decode(encoded))
        if private:
            os.chown(path, PROXY_USER, PROXY_USER)
