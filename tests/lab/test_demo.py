"""`meshcp demo` end to end (real lab, short traffic)."""

from __future__ import annotations

import re

from tests.lab.driver import BOOKSTORE, LabDriver, lab_leftovers, require_lab


def test_demo_reports_calls_split_and_mtls_then_removes_the_lab() -> None:
    require_lab()
    assert lab_leftovers() == [], "a lab is already on this machine"
    result = LabDriver(BOOKSTORE).meshcp("demo", "--source", str(BOOKSTORE), "--duration", "3")
    out = result.stdout
    rows = [line for line in out.splitlines() if line.startswith(("bookbuyer-0", "bookthief-0"))]
    assert len(rows) == 5, out
    assert all(row.rstrip().endswith(" ok") for row in rows), out
    assert re.search(r"GET bookstore\.bookstore:14001/books-bought\s+200 x\d+\s+allowed", out), out
    assert re.search(r"bookthief-0\s+GET bookstore\.bookstore:14001/books-bought\s+403 x\d+\s+denied", out), (
        out
    )
    split = re.search(r"bookstore-v1-0 \d+ \((\d+)%\), bookstore-v2-0 \d+ \((\d+)%\)", out)
    assert split is not None, out
    assert 55 <= int(split[1]) <= 95, out
    handshakes = re.search(r"handshakes .*: bookstore-v1-0 (\d+), bookstore-v2-0 (\d+)", out)
    assert handshakes is not None and int(handshakes[1]) > 0 and int(handshakes[2]) > 0, out
    assert out.rstrip().endswith("lab removed")
    assert lab_leftovers() == []
