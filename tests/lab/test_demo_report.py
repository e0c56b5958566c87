"""`meshcp demo`'s report says whether every call got what the policy gives: a denied call
that was served (or an allowed one refused) is UNEXPECTED, and the demo then exits 1."""

from __future__ import annotations

import io

from meshcp.lab.demo import CALLS, _report


def test_every_call_as_the_policy_says_is_ok() -> None:
    results = [
        (call, {"statuses": {"200": 3} if call.expect == "allowed" else {"403": 3}, "served_by": {}})
        for call in CALLS
    ]
    out = io.StringIO()
    assert _report(results, {}, out) is True
    assert "UNEXPECTED" not in out.getvalue()


def test_a_denied_call_that_was_served_is_unexpected() -> None:
    results = [(call, {"statuses": {"200": 3}, "served_by": {}}) for call in CALLS]
    out = io.StringIO()
    assert _report(results, {}, out) is False
    assert "UNEXPECTED" in out.getvalue()
