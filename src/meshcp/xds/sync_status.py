"""Where each connected proxy stands with what it was sent: per type SYNCED, STALE, NACKED or
NOT SENT, and the mesh-wide summary `meshcp check` reads (`/sync` on the HTTP listener).

Pure functions of `ConnectedProxies.status()` items (with the class's current versions), so
that `proxy status` (the full list from the debug listener) and the summary agree on what
"in sync" means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The most proxies out of sync one summary names (`/sync?limit=`).
MAX_LIMIT = 100
#: How much of a NACK's message the summary carries (Envoy's can be long).
MESSAGE_CHARACTERS = 300


def _short_message(text: str) -> str:
    """One line, and its end when long: Envoy's NACK message prints the rejected resource
    first and the reason last."""
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_CHARACTERS else "…" + line[-MESSAGE_CHARACTERS:]


def sync_state(details: Mapping[str, Any] | None) -> str:
    """SYNCED, STALE, NACKED or NOT SENT: where one proxy stands for one type."""
    if not details or not details.get("version_sent"):
        return "NOT SENT"
    nack = details.get("last_nack")
    if (
        nack
        and nack.get("version") == details["version_sent"]
        and details.get("version_acked") != nack["version"]
    ):
        return "NACKED"
    if details.get("current") is True:
        return "SYNCED"
    return "STALE"


def _problems(proxy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per type of `proxy` that is not SYNCED."""
    found = []
    types = proxy.get("types") or {}
    for short in sorted(types):
        details = types[short]
        state = sync_state(details)
        if state == "SYNCED":
            continue
        nack = details.get("last_nack") if state == "NACKED" else None
        message = str(nack.get("message") or "") if nack else ""
        found.append(
            {
                "node_id": str(proxy.get("node_id") or ""),
                "pod": proxy.get("pod"),
                "type": short,
                "state": state,
                "message": _short_message(message),
            }
        )
    return found


def summary(proxies: Sequence[Mapping[str, Any]], limit: int) -> dict[str, Any]:
    """How many proxies are connected, how many hold every type they subscribed to at the
    current version, and the first `limit` (proxy, type) pairs that do not, by node id.

    Why a summary and not the list: it is served on the HTTP listener, which other parties
    reach (the API server's pod proxy, Prometheus); it names only what is wrong, as
    `/dashboard/data` names workloads, never a proxy's configuration (the debug listener's).
    """
    problems = [_problems(proxy) for proxy in proxies]
    flat = [entry for entries in problems for entry in entries]
    flat.sort(key=lambda entry: (entry["node_id"], entry["type"]))
    return {
        "connected": len(proxies),
        "in_sync": sum(1 for entries in problems if not entries),
        "not_in_sync": flat[: max(0, min(limit, MAX_LIMIT))],
        "not_in_sync_total": len(flat),
    }
