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
    # The KPIs the mesh measured, read back from the lab's Prometheus.
    assert "KPIs from Prometheus" in out, out
    for leaf in ("bookstore-v1", "bookstore-v2"):
        edge = re.search(rf"bookbuyer/bookbuyer\s+bookstore/{leaf}\s+(\d+)\s+([\d.]+)%", out)
        assert edge is not None and int(edge[1]) > 0, out
        # bookbuyer's POSTs are refused (403) by policy: answers, not failures (half of
        # its calls are 403s; the few 5xx are the app's own calls while the lab started).
        assert float(edge[2]) > 90.0, out
    # bookthief may reach nothing: refused by its own sidecar, it is no edge of the mesh.
    assert "bookthief/bookthief " not in out.split("KPIs from Prometheus")[1], out
    p99 = re.search(
        r"bookbuyer/bookbuyer\s+bookstore/bookstore-v1\s+\d+\s+[\d.]+%\s+[\d.]+\s+([\d.]+)ms", out
    )
    assert p99 is not None and float(p99[1]) > 0, out  # p99 from Envoy's histograms
    assert not re.search(r"\s0\s+-\s+0\.0\s+-", out), out  # edges that carried nothing are not shown
    shares = re.search(
        r"TrafficSplit bookstore/bookstore-split \(bookstore\): "
        r"bookstore-v1 75% configured, ([\d.]+)% observed, bookstore-v2 25% configured, ([\d.]+)% observed",
        out,
    )
    assert shares is not None, out
    assert 55 <= float(shares[1]) <= 95 and abs(float(shares[1]) + float(shares[2]) - 100) < 0.2, out
    assert out.rstrip().endswith("lab removed")
    assert lab_leftovers() == []
