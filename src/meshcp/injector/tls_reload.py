"""The webhook's serving certificate, re-read from its files when they change.

The serving certificate is usually a Kubernetes Secret volume that cert-manager (or an
operator) replaces in place. It is re-read when its files change, checked on every TLS
handshake (two `stat` calls), so the very next connection presents the new certificate and
no restart is needed.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

#: The webhook server's logger: reloading its certificate is part of serving.
log = logging.getLogger("meshcp.injector.server")


class ReloadingTls:
    """A server TLS context whose certificate follows its files.

    `context` is what the listener uses. On each handshake its SNI callback (called with or
    without SNI) compares the files' stat signature with the loaded one and, when it
    changed, loads a new context and switches the connection to it. A pair that does not
    load (a certificate written before its key) is reported once and the previous
    certificate keeps serving until the files change again.
    """

    def __init__(self, cert: Path, key: Path, *, on_reload: Callable[[bool], None] | None = None) -> None:
        self._cert, self._key = cert, key
        self._on_reload = on_reload
        self._signature = self._stat()
        self._failed: tuple[int, ...] | None = None
        self.context = self._current = self._load()
        self.context.sni_callback = self._on_handshake

    def refresh(self) -> bool:
        """Load the files again if they changed; whether a new certificate is now served."""
        try:
            signature = self._stat()
        except OSError:
            return False  # mid-replacement; the next handshake looks again
        if signature in (self._signature, self._failed):
            return False
        try:
            context = self._load()
        except (OSError, ssl.SSLError, ValueError) as error:
            self._failed = signature
            log.warning(
                "serving certificate %s not reloaded, keeping the previous one: %s", self._cert, error
            )
            self._report(False)
            return False
        self._current, self._signature, self._failed = context, signature, None
        log.info("serving certificate reloaded from %s", self._cert)
        self._report(True)
        return True

    def _on_handshake(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        self.refresh()
        if connection.context is not self._current:
            connection.context = self._current

    def _report(self, ok: bool) -> None:
        if self._on_reload is not None:
            self._on_reload(ok)

    def _stat(self) -> tuple[int, ...]:
        signature: list[int] = []
        for path in (self._cert, self._key):
            st = os.stat(path)
            signature += [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev]
        return tuple(signature)

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        return context
