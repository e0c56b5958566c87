"""The webhook configuration's caBundle, written by the injector itself (`--webhook-config`),
as OSM's injector did: the API server trusts the injector's serving certificate only
through `clientConfig.caBundle`, so whoever rotates that certificate's CA must also change
the bundle, and the injector is the one process that sees the certificate it serves.

The bundle is the CA of the serving certificate: `--webhook-ca` if given, else `ca.crt`
beside `--tls-cert` (what a kubernetes.io/tls Secret volume holds when cert-manager or an
operator fills it), else the last certificate of the served chain (a self-signed
certificate is its own CA). It is checked at start and every `interval`, and at once when
the serving certificate is reloaded; the configuration is patched only when a webhook's
bundle differs (so a `kubectl apply` that emptied it is repaired too).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

from meshcp.certs.pem import fingerprint_sha256, load_certificates, to_pem
from meshcp.injector.kube import ClusterError, KubeCluster

log = logging.getLogger("meshcp.injector.webhook_ca")


def ca_bundle_file(tls_cert: Path, webhook_ca: Path | None) -> Path | None:
    """Where the CA is read from; None: the last certificate of `tls_cert`."""
    if webhook_ca is not None:
        return webhook_ca
    beside = tls_cert.parent / "ca.crt"
    return beside if beside.exists() else None


def read_ca_bundle(tls_cert: Path, webhook_ca: Path | None) -> tuple[str, str]:
    """The caBundle (base64 of the PEM) and a description of it for the log; ValueError or
    OSError when the file has no certificate or cannot be read."""
    source = ca_bundle_file(tls_cert, webhook_ca)
    if source is None:
        certificates = load_certificates(tls_cert.read_bytes())[-1:]
        where = f"the last certificate of {tls_cert}"
    else:
        certificates = load_certificates(source.read_bytes())
        where = str(source)
    described = ", ".join(
        f"{c.subject.rfc4514_string()} (SHA-256 {fingerprint_sha256(c)[:23]}...)" for c in certificates
    )
    return base64.b64encode(to_pem(certificates).encode("ascii")).decode("ascii"), f"{described} from {where}"


class WebhookCaBundle:
    """Keeps every webhook's caBundle of MutatingWebhookConfiguration `name` equal to the
    serving certificate's CA."""

    def __init__(
        self,
        cluster: KubeCluster,
        name: str,
        *,
        tls_cert: Path,
        webhook_ca: Path | None = None,
        interval: float = 10.0,
    ) -> None:
        self._cluster = cluster
        self._name = name
        self._tls_cert = tls_cert
        self._webhook_ca = webhook_ca
        self._interval = interval
        self._wake = asyncio.Event()
        #: The last failure logged (one line per change of state, not per attempt).
        self._failure = ""

    def changed(self, reloaded: bool = True) -> None:
        """The serving certificate was reloaded: check the bundle now (an `on_reload` hook)."""
        if reloaded:
            self._wake.set()

    async def sync(self) -> bool:
        """Patch the configuration if a webhook's bundle differs; whether it patched."""
        bundle, described = await asyncio.to_thread(read_ca_bundle, self._tls_cert, self._webhook_ca)
        for attempt in range(3):  # a configuration changed between read and patch is read again
            version, bundles = await self._cluster.webhook_ca_bundles(self._name)
            if not bundles:
                raise ClusterError(f"MutatingWebhookConfiguration {self._name} has no webhooks")
            if all(found == bundle for found in bundles):
                return False
            try:
                await self._cluster.set_webhook_ca_bundle(self._name, version, len(bundles), bundle)
            except ClusterError:
                if attempt == 2:
                    raise
                continue
            log.info(
                "MutatingWebhookConfiguration %s: caBundle of %d webhook(s) set to %s",
                self._name,
                len(bundles),
                described,
            )
            return True
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Sync now, then every `interval` (or when woken) until `stop`; failures are
        logged once per change and retried, never fatal: the webhook keeps answering with
        whatever bundle the API server has."""
        while not stop.is_set():
            try:
                await self.sync()
            except (ClusterError, OSError, ValueError) as error:
                if str(error) != self._failure:
                    log.error(
                        "cannot keep the webhook's caBundle: %s; retrying every %gs", error, self._interval
                    )
                    self._failure = str(error)
            else:
                if self._failure:
                    log.info("MutatingWebhookConfiguration %s: caBundle checked again", self._name)
                    self._failure = ""
            self._wake.clear()
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
            try:
                await asyncio.wait(waits, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
