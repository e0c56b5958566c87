"""`meshcp policy check SRC DST` on copies of examples/bookstore: allowed or denied, and
the TrafficTarget, route and match (or the mode) that decides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.runner import EXAMPLE, bookstore, meshcp

BUYER, THIEF, STORE = "bookbuyer/bookbuyer-0", "bookthief/bookthief-0", "bookstore/bookstore-v1-0"
BY_BUY_A_BOOK = (
    "TrafficTarget bookbuyer-access-bookstore "
    "(HTTPRouteGroup bookstore/bookstore-service-routes, match buy-a-book)"
)


def check(
    capsys: pytest.CaptureFixture[str], *args: str, source: Path = EXAMPLE
) -> tuple[int, list[dict[str, Any]]]:
    ran = meshcp(capsys, "policy", "check", *args, "--source", str(source), "-o", "json")
    assert ran.err == "" or ran.status == 1, ran.err
    return ran.status, json.loads(ran.out) if ran.out else []


def decisions(rows: list[dict[str, Any]]) -> set[str]:
    return {row["decision"] for row in rows}


def test_an_allowed_request_names_target_group_and_match(capsys: pytest.CaptureFixture[str]) -> None:
    status, rows = check(capsys, BUYER, STORE, "--path", "/buy-a-book/new", "--method", "GET")
    assert status == 0
    assert [row["service"] for row in rows] == ["bookstore/bookstore", "bookstore/bookstore-v1"]
    for row in rows:
        assert (row["decision"], row["port"], row["protocol"]) == ("allowed", 14001, "http")
        assert row["decided_by"] == [BY_BUY_A_BOOK]


def test_a_request_no_match_allows_is_denied(capsys: pytest.CaptureFixture[str]) -> None:
    status, rows = check(capsys, BUYER, STORE, "--path", "/update-books-bought", "--method", "POST")
    assert status == 1
    assert decisions(rows) == {"denied"}
    assert rows[0]["decided_by"] == ["TrafficTarget bookbuyer-access-bookstore"]
    assert "none of their matches allows POST /update-books-bought" in rows[0]["reason"]


def test_headers_a_match_needs(capsys: pytest.CaptureFixture[str]) -> None:
    status, rows = check(capsys, BUYER, STORE, "--path", "/books-bought", "--method", "GET")
    assert status == 1
    assert "match books-bought needs headers client-app, user-agent" in rows[0]["reason"]
    headers = ["--header", "client-app:bookbuyer", "--header", "User-Agent: Go-http-client/1.1"]
    status, rows = check(capsys, BUYER, STORE, "--path", "/books-bought", "--method", "GET", *headers)
    assert status == 0
    assert decisions(rows) == {"allowed"}
    assert "match books-bought)" in rows[0]["decided_by"][0]


def test_no_request_given_says_which_requests(capsys: pytest.CaptureFixture[str]) -> None:
    status, rows = check(capsys, BUYER, STORE, "--port", "14001")
    assert status == 0
    assert decisions(rows) == {"some requests"}
    assert len(rows[0]["decided_by"]) == 2  # books-bought and buy-a-book


def test_default_deny(capsys: pytest.CaptureFixture[str]) -> None:
    status, rows = check(capsys, "bookthief-0", "bookstore/bookstore-v1-0", "-n", "bookthief")
    assert status == 1
    assert (
        rows[0]["reason"]
        == "no TrafficTarget to bookstore/bookstore names bookthief/bookthief as a source (default deny)"
    )
    assert rows[0]["decided_by"] == []


def test_a_tcp_route_allows_every_request_and_permissive_mode_everyone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = bookstore(tmp_path)
    with (mesh / "smi.yaml").open("a") as file:
        file.write(
            """
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: store-port, namespace: bookstore}
spec: {matches: {ports: [14001]}}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: thief-welcome, namespace: bookstore}
spec:
  destination: {kind: ServiceAccount, name: bookstore, namespace: bookstore}
  rules: [{kind: TCPRoute, name: store-port}]
  sources: [{kind: ServiceAccount, name: bookthief, namespace: bookthief}]
"""
        )
    status, rows = check(capsys, THIEF, STORE, "--path", "/anything", "--method", "DELETE", source=mesh)
    assert status == 0
    assert rows[0]["decided_by"] == ["TrafficTarget thief-welcome (TCPRoute store-port: every request)"]

    namespaces = mesh / "namespaces.yaml"
    namespaces.write_text(
        namespaces.read_text().replace(
            "  name: bookwarehouse\n",
            "  name: bookwarehouse\n  annotations:\n    meshcp.dev/permissive: 'true'\n",
        )
    )
    status, rows = check(capsys, THIEF, "bookwarehouse/bookwarehouse-0", source=mesh)
    assert status == 0
    assert rows[0]["decided_by"] == ["permissive mode of namespace bookwarehouse"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([BUYER, STORE, "--port", "9999"], "meshcp: error: bookstore/bookstore-v1-0 serves no port 9999"),
        ([BUYER, "bookstore/nobody"], "meshcp: error: there is no pod bookstore/nobody in the manifests"),
    ],
)
def test_questions_the_manifests_cannot_answer(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    ran = meshcp(capsys, "policy", "check", *args, "--source", str(EXAMPLE))
    assert ran.status == 1
    assert ran.err.startswith(message) and len(ran.err.splitlines()) == 1, ran.err


def test_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    ran = meshcp(
        capsys, "policy", "check", BUYER, STORE, "--path", "/buy-a-book/new", "--source", str(EXAMPLE)
    )
    assert ran.status == 0
    header, *rows = ran.out.splitlines()
    assert header.split()[:4] == ["DESTINATION", "PORT", "PROTOCOL", "DECISION"]
    assert [row.split()[:4] for row in rows] == [
        ["bookstore/bookstore", "14001", "http", "ALLOWED"],
        ["bookstore/bookstore-v1", "14001", "http", "ALLOWED"],
    ]


def test_pods_outside_the_mesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mesh = bookstore(tmp_path)
    pods = mesh / "pods.yaml"
    pods.write_text(
        pods.read_text().replace(
            "  name: bookthief-0\n",
            "  name: bookthief-0\n  annotations:\n    meshcp.dev/sidecar-injection: disabled\n",
        )
    )
    status, rows = check(capsys, THIEF, STORE, source=mesh)
    assert status == 1
    assert rows[0]["reason"] == (
        "bookthief/bookthief-0 is not in the mesh: bookstore/bookstore-v1-0's sidecar accepts only mTLS "
        "from mesh identities"
    )
    status, rows = check(capsys, BUYER, THIEF, source=mesh)
    assert status == 1
    assert rows[0]["decided_by"] == ["MeshConfig meshcp"]
    assert "egress passthrough, which is off" in rows[0]["reason"]


def test_a_pod_outside_the_mesh_reached_by_an_osm_egress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = bookstore(tmp_path)
    pods = mesh / "pods.yaml"
    pods.write_text(
        pods.read_text().replace(
            "  name: bookthief-0\n",
            "  name: bookthief-0\n  annotations:\n    meshcp.dev/sidecar-injection: disabled\n",
        )
    )
    (mesh / "egress.yaml").write_text(
        """\
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {name: thief-db, namespace: bookbuyer}
spec:
  sources: [{kind: ServiceAccount, name: bookbuyer}]
  ipAddresses: [10.244.3.0/24]
  ports: [{number: 5432, protocol: tcp}]
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {name: elsewhere, namespace: bookbuyer}
spec:
  sources: [{kind: ServiceAccount, name: bookbuyer}]
  ipAddresses: [192.0.2.0/24]
  ports: [{number: 5433, protocol: tcp}]
"""
    )
    status, rows = check(capsys, BUYER, THIEF, "--port", "5432", source=mesh)
    assert (status, rows[0]["decision"], rows[0]["decided_by"]) == (
        0,
        "allowed",
        ["Egress bookbuyer/thief-db"],
    )
    assert rows[0]["reason"].endswith("bookbuyer/bookbuyer-0's Egresses allow 5432/tcp")
    status, rows = check(capsys, BUYER, THIEF, "--port", "5433", source=mesh)
    assert (status, rows[0]["decision"]) == (1, "denied")
    assert "none names this address and port" in rows[0]["reason"]
