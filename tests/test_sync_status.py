"""What `/sync` and `proxy status` call in sync, stale, NACKed or not sent, on stream states
as `ConnectedProxies.status` records them; how many proxies the summary names."""

from __future__ import annotations

from typing import Any

import pytest

from meshcp.xds.sync_status import summary


def _type(sent: str, acked: str, current: bool, nack: str | None = None) -> dict[str, Any]:
    return {
        "version_sent": sent,
        "version_acked": acked,
        "current": current,
        "last_nack": None if nack is None else {"version": nack, "message": "bad " + nack},
    }


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ({"cds": _type("a", "a", True)}, []),
        ({"cds": _type("b", "a", False)}, [("cds", "STALE", "")]),
        ({"lds": _type("b", "a", False, nack="b")}, [("lds", "NACKED", "bad b")]),
        # A NACK of an older version, since replaced by content it ACKed: in sync.
        ({"lds": _type("c", "c", True, nack="b")}, []),
        ({"eds": {"version_sent": "", "version_acked": "", "current": False}}, [("eds", "NOT SENT", "")]),
    ],
)
def test_summary_names_each_type_not_in_sync(types: dict[str, Any], expected: list[tuple[str, ...]]) -> None:
    result = summary([{"node_id": "n", "pod": "shop/n-0", "types": types}], limit=10)
    assert result["connected"] == 1
    assert result["in_sync"] == (0 if expected else 1)
    assert [(e["type"], e["state"], e["message"]) for e in result["not_in_sync"]] == expected
    assert all(e["pod"] == "shop/n-0" for e in result["not_in_sync"])


def test_summary_names_at_most_limit_but_counts_all() -> None:
    stale = {"cds": _type("b", "a", False), "lds": _type("b", "a", False)}
    proxies = [{"node_id": f"n{i}", "types": stale} for i in range(3)]
    result = summary(proxies, limit=4)
    assert (result["connected"], result["in_sync"], result["not_in_sync_total"]) == (3, 0, 6)
    assert [(e["node_id"], e["type"]) for e in result["not_in_sync"]] == [
        ("n0", "cds"), ("n0", "lds"), ("n1", "cds"), ("n1", "lds"),
    ]  # fmt: skip
    assert summary(proxies, limit=10_000)["not_in_sync"] == summary(proxies, limit=100)["not_in_sync"]


def test_a_long_nack_message_keeps_its_end_on_one_line() -> None:
    types = {"lds": _type("b", "a", False, nack="b")}
    types["lds"]["last_nack"]["message"] = "name: x\n" * 100 + "port: value too large"
    [entry] = summary([{"node_id": "n", "types": types}], limit=1)["not_in_sync"]
    assert entry["message"].startswith("…") and entry["message"].endswith("name: x port: value too large")
    assert len(entry["message"]) == 301
