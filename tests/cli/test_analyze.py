"""`meshcp analyze` and `meshcp compile` on copies of examples/bookstore with mistakes in
them, as a user would make them: each is found, with its code, field and the file:line of
the field; errors (and with --strict warnings) end in exit status 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.cli.runner import EXAMPLE, bookstore, line_of, meshcp

GHOST = """
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata:
  name: ghost
  namespace: bookstore
spec:
  destination:
    kind: ServiceAccount
    name: nobody
    namespace: bookstore
  rules:
  - kind: HTTPRouteGroup
    name: broken-routes
  - kind: TCPRoute
    name: missing-tcp
  - kind: HTTPRouteGroup
    name: bookstore-service-routes
    matches:
    - buy-a-book
    - no-such-match
  sources:
  - kind: ServiceAccount
    name: bookbuyer
    namespace: nowhere
  - kind: ServiceAccount
    name: phantom
    namespace: bookbuyer
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: broken-routes
  namespace: bookstore
spec:
  matches:
  - name: x
    methods:
    - FETCH
"""

SHADOWS = """
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata:
  name: bookbuyer-again
  namespace: bookstore
spec:
  destination:
    kind: ServiceAccount
    name: bookstore
    namespace: bookstore
  rules:
  - kind: HTTPRouteGroup
    name: bookstore-service-routes
    matches:
    - buy-a-book
  sources:
  - kind: ServiceAccount
    name: bookbuyer
    namespace: bookbuyer
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata:
  name: db-port
  namespace: bookstore
spec:
  matches:
    ports:
    - 5432
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata:
  name: db-only
  namespace: bookstore
spec:
  destination:
    kind: ServiceAccount
    name: bookstore
    namespace: bookstore
  rules:
  - kind: TCPRoute
    name: db-port
  sources:
  - kind: ServiceAccount
    name: bookbuyer
    namespace: bookbuyer
"""

SPLIT = """
---
apiVersion: v1
kind: Service
metadata:
  name: bookwarehouse-v2
  namespace: bookwarehouse
spec:
  clusterIP: 10.96.20.2
  selector:
    app: bookwarehouse
  ports:
  - name: other
    port: 15000
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: warehouse-split
  namespace: bookwarehouse
spec:
  service: bookwarehouse
  backends:
  - service: bookwarehouse-v9
    weight: 1
  - service: bookwarehouse-v2
    weight: 1
"""

BAD_SERVICE = """
---
apiVersion: v1
kind: Service
metadata:
  name: svc-bad
  namespace: bookstore
spec:
  clusterIP: 10.96.10.9
  selector:
    app: nothing
  ports:
  - name: web
    port: 8080
  - name: tcp-db
    port: 99999
"""


def _mesh(tmp_path: Path, **extra: str) -> Path:
    directory = bookstore(tmp_path)
    for name, text in extra.items():
        with (directory / f"{name}.yaml").open("a") as file:
            file.write(text)
    return directory


def _rows(
    capsys: pytest.CaptureFixture[str], directory: Path, *args: str
) -> tuple[int, list[dict[str, str]]]:
    ran = meshcp(capsys, "analyze", "--source", str(directory), "-o", "json", *args)
    return ran.status, json.loads(ran.out)


def _found(rows: list[dict[str, str]], code: str, field: str) -> dict[str, str]:
    matching = [row for row in rows if row["code"] == code and row["field"] == field]
    assert len(matching) == 1, (code, field, rows)
    return matching[0]


def test_the_bookstore_has_no_problems(capsys: pytest.CaptureFixture[str]) -> None:
    ran = meshcp(capsys, "analyze", "--source", str(EXAMPLE))
    assert (ran.status, ran.out, ran.err) == (0, "no problems found\n", "")
    ran = meshcp(capsys, "analyze", "--source", str(EXAMPLE), "--strict", "-o", "yaml")
    assert (ran.status, yaml.safe_load(ran.out)) == (0, [])


def test_dangling_references_of_a_target_without_pods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _mesh(tmp_path, ghost=GHOST)
    status, rows = _rows(capsys, directory)
    assert status == 1
    file = directory / "ghost.yaml"
    ghost = "TrafficTarget bookstore/ghost"
    expected = [
        (
            "MCP0101",
            "spec.destination.name",
            "name: nobody",
            "ServiceAccount bookstore/nobody does not exist",
        ),
        (
            "MCP0104",
            "spec.rules[0].name",
            "name: broken-routes",
            "HTTPRouteGroup bookstore/broken-routes is invalid",
        ),
        (
            "MCP0103",
            "spec.rules[1].name",
            "name: missing-tcp",
            "TCPRoute bookstore/missing-tcp does not exist",
        ),
        ("MCP0105", "spec.rules[2].matches[1]", "- no-such-match", "has no match named 'no-such-match'"),
        ("MCP0102", "spec.sources[0].namespace", "namespace: nowhere", "namespace nowhere is not known"),
        (
            "MCP0101",
            "spec.sources[1].name",
            "name: phantom",
            "ServiceAccount bookbuyer/phantom does not exist",
        ),
    ]
    for code, field, text, message in expected:
        row = _found(rows, code, field)
        assert row["object"] == ghost
        assert row["severity"] == "error"
        assert row["location"] == f"ghost.yaml:{line_of(file, text)}", row
        assert message in row["message"], row
    # The invalid group is reported as invalid, at the field, not as the document.
    invalid = _found(rows, "MCP0002", "spec.matches[0].methods[0]")
    assert invalid["object"] == "HTTPRouteGroup bookstore/broken-routes"
    assert invalid["location"] == f"ghost.yaml:{line_of(file, '- FETCH')}"
    assert not any("does not exist" in row["message"] and "broken-routes" in row["message"] for row in rows)


def test_targets_allowing_nothing_or_shadowed_are_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _mesh(tmp_path, shadows=SHADOWS)
    status, rows = _rows(capsys, directory)
    assert status == 0, rows  # warnings only
    shadowed = _found(rows, "MCP0202", "")
    assert shadowed["object"] == "TrafficTarget bookstore/bookbuyer-again"
    assert "bookbuyer-access-bookstore already allows everything" in shadowed["message"]
    nothing = _found(rows, "MCP0201", "spec.rules")
    assert nothing["object"] == "TrafficTarget bookstore/db-only"
    assert nothing["location"] == f"shadows.yaml:{line_of(directory / 'shadows.yaml', 'rules:', 'db-only')}"
    assert {row["severity"] for row in rows} == {"warning"}
    assert _rows(capsys, directory, "--strict")[0] == 1


def test_split_backends_missing_or_without_the_apex_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _mesh(tmp_path, split=SPLIT)
    status, rows = _rows(capsys, directory)
    assert status == 1
    file = directory / "split.yaml"
    missing = _found(rows, "MCP0402", "spec.backends[0].service")
    assert missing["location"] == f"split.yaml:{line_of(file, 'service: bookwarehouse-v9')}"
    lacking = _found(rows, "MCP0401", "spec.backends[1].service")
    assert "lacks the apex port(s) [14001]" in lacking["message"]
    assert lacking["location"] == f"split.yaml:{line_of(file, 'service: bookwarehouse-v2')}"
    undecided = _found(rows, "MCP0301", "spec.ports[0].name")
    assert undecided["object"] == "Service bookwarehouse/bookwarehouse-v2"
    assert "http is assumed" in undecided["message"]
    assert undecided["location"] == f"split.yaml:{line_of(file, 'name: other')}"


def test_an_invalid_field_is_located_at_its_line_not_the_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _mesh(tmp_path, services=BAD_SERVICE)
    ran = meshcp(capsys, "analyze", "--source", str(directory))
    assert ran.status == 1
    line = line_of(directory / "services.yaml", "port: 99999")
    assert f"services.yaml:{line}" in ran.out
    assert "MCP0002" in ran.out and "must be a port number 1..65535, got 99999" in ran.out


def test_namespace_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _mesh(tmp_path, ghost=GHOST, split=SPLIT)
    _, rows = _rows(capsys, directory, "-n", "bookwarehouse")
    assert rows and all(row["object"].split(" ")[1].startswith("bookwarehouse/") for row in rows)
    _, rows = _rows(capsys, directory, "-n", "bookbuyer")
    assert rows == []


def test_compile_prints_the_config_and_exits_1_when_the_mesh_has_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _mesh(tmp_path, ghost=GHOST)
    ran = meshcp(capsys, "compile", "bookstore-v1-0", "-n", "bookstore", "--source", str(directory))
    assert ran.status == 1
    config = json.loads(ran.out)
    assert config["identity"] == "bookstore/bookstore"
    assert any("MCP0104" in problem and "ghost.yaml:" in problem for problem in config["problems"])
    assert ran.err.strip().splitlines() == [
        "meshcp: error: the mesh has 7 error(s); `meshcp analyze` lists them"
    ]
    clean = meshcp(capsys, "compile", "bookstore/bookstore-v1-0", "--source", str(EXAMPLE))
    assert (clean.status, json.loads(clean.out)["problems"]) == (0, [])


def test_what_the_source_reports_gets_codes_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = bookstore(tmp_path)
    (directory / "broken.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n")
    (directory / "deploy.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: bookstore\n"
    )
    (directory / "zz-again.yaml").write_text(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: bookstore\n  namespace: bookstore\n"
    )
    status, rows = _rows(capsys, directory)
    assert status == 1
    by_code = {row["code"]: row for row in rows}
    assert set(by_code) == {"MCP0001", "MCP0003", "MCP0004"}, rows
    assert by_code["MCP0001"]["location"].startswith("broken.yaml:")
    assert by_code["MCP0001"]["severity"] == "error"
    assert by_code["MCP0003"]["location"] == "deploy.yaml:1"
    assert "unsupported kind Deployment" in by_code["MCP0003"]["message"]
    assert by_code["MCP0004"]["object"] == "ServiceAccount bookstore/bookstore"
    assert by_code["MCP0004"]["location"] == "zz-again.yaml:1"
