"""What the controller's `/debug/proxies` says of a sidecar: has it ACKed everything it was
sent, and if not, what it is waiting for (for `lab up`'s readiness and `lab status`)."""

from __future__ import annotations

from typing import Any

PROXY_TYPES = ("cds", "eds", "lds", "rds", "sds")


def converged(proxy: dict[str, Any]) -> bool:
    """The proxy has clusters and listeners, and has ACKed every type it was sent. A type
    it subscribes to nothing of (no names, not wildcard: an Envoy whose last EDS clusters
    were removed re-sends such an empty subscription when it reconnects) has nothing to
    wait for."""
    types = proxy.get("types", {})
    if not {"cds", "lds"} <= set(types):
        return False
    return all(
        (
            t.get("version_sent")
            and t.get("version_acked") == t.get("version_sent")
            and not t.get("awaiting_ack")
        )
        or (not t.get("wildcard") and not t.get("names") and not t.get("awaiting_ack"))
        for t in types.values()
    )


def lag(proxy: dict[str, Any]) -> str:
    """Why a proxy has not converged: the types it NACKed, else those awaiting an ACK."""
    types = proxy.get("types", {})
    nacked = [name for name, t in types.items() if t.get("last_nack")]
    waiting = [name for name in PROXY_TYPES if name in types and types[name].get("awaiting_ack")]
    if nacked:
        return "NACK " + ",".join(nacked)
    if waiting:
        return "awaiting " + ",".join(waiting)
    return "syncing"


def acked_versions(proxy: dict[str, Any]) -> tuple[str, ...]:
    """The versions the proxy last ACKed, by type name: when they change, it ACKed something new."""
    return tuple(str(t.get("version_acked") or "") for _, t in sorted(proxy.get("types", {}).items()))
