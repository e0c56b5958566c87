"""`lab.proxy_status`: when the lab counts a sidecar as configured, from /debug/proxies."""

from __future__ import annotations

from typing import Any

from meshcp.lab.proxy_status import converged, lag


def _type(sent: str = "v1", acked: str = "v1", **extra: Any) -> dict[str, Any]:
    return {"wildcard": False, "names": ["x"], "version_sent": sent, "version_acked": acked, **extra}


def proxy(**types: dict[str, Any]) -> dict[str, Any]:
    return {"node_id": "n", "types": types}


def test_every_type_sent_and_acked_is_converged() -> None:
    assert converged(proxy(cds=_type(wildcard=True), lds=_type(wildcard=True), rds=_type()))


def test_without_clusters_or_listeners_it_is_not() -> None:
    assert not converged(proxy(cds=_type(wildcard=True)))


def test_a_type_awaiting_its_ack_is_not() -> None:
    found = proxy(cds=_type(wildcard=True), lds=_type(wildcard=True), eds=_type(acked="", awaiting_ack=True))
    assert not converged(found)
    assert lag(found) == "awaiting eds"


def test_an_empty_subscription_waits_for_nothing() -> None:
    """A proxy that may reach no service re-sends an EDS request naming nothing when it
    reconnects: nothing is due, so it is converged (it was 'syncing' for ever)."""
    empty = {"wildcard": False, "names": [], "version_sent": "", "version_acked": "", "awaiting_ack": False}
    assert converged(proxy(cds=_type(wildcard=True), lds=_type(wildcard=True), eds=empty))
    # named resources not yet sent still count
    assert not converged(
        proxy(cds=_type(wildcard=True), lds=_type(wildcard=True), eds=_type(sent="", acked=""))
    )
