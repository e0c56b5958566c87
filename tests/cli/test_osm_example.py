"""examples/osm without a lab: `meshcp analyze` finds nothing but the unsupported fields
of OSM's MeshConfig (MCP0210, the ones its README lists), and `meshcp compile` puts each
of OSM's policies on the proxies its README says (the lab test,
tests/lab/test_lab_osm_example.py, shows them working)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli.runner import meshcp

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "osm"
OSM_MESH_CONFIG = "MeshConfig osm-system/osm-mesh-config"


def _readme_unsupported() -> set[str]:
    """The fields of the README's table of OSM MeshConfig fields meshcp ignores."""
    return set(re.findall(r"^  \| `(spec\.[\w.]+)` \|", (EXAMPLE / "README.md").read_text(), re.MULTILINE))


def test_analyze_reports_only_the_unsupported_fields_the_readme_lists(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran = meshcp(capsys, "analyze", "--source", str(EXAMPLE), "-o", "json")
    assert ran.status == 0, ran
    findings = json.loads(ran.out)
    assert {(f["code"], f["severity"], f["object"]) for f in findings} == {
        ("MCP0210", "warning", OSM_MESH_CONFIG)
    }
    fields = [f["field"] for f in findings]
    assert len(fields) == len(set(fields))  # once each
    assert set(fields) == _readme_unsupported()
    assert len(fields) == 4


def _compiled(capsys: pytest.CaptureFixture[str], pod: str) -> tuple[str, dict[str, Any]]:
    ran = meshcp(capsys, "compile", pod, "--source", str(EXAMPLE))
    assert ran.status == 0, ran
    found: dict[str, Any] = json.loads(ran.out)
    assert all("MCP0210" in problem for problem in found["problems"]), found["problems"]
    return ran.out, found


def test_each_policy_lands_where_the_readme_says(capsys: pytest.CaptureFixture[str]) -> None:
    curl, _ = _compiled(capsys, "curl/curl-0")
    fortio, _ = _compiled(capsys, "demo/fortio-0")
    httpbin, _ = _compiled(capsys, "httpbin/httpbin-0")
    limited, _ = _compiled(capsys, "demo/httpbin-0")
    # Egress httpbin-ext: curl's outbound listener only
    assert '"egress:http.80"' in curl and '"egress|httpbin.org"' in curl
    assert "egress:" not in fortio
    # Retry: curl's routes only
    assert '"retryOn": "5xx"' in curl and '"numRetries": 5' in curl
    assert "retryOn" not in fortio
    # IngressBackend: httpbin/httpbin's inbound listener, not demo/httpbin's
    assert '"ingress:httpbin/httpbin|14001|local"' in httpbin
    assert '"ingress:' not in limited
    # UpstreamTrafficSetting http-rate-limit: demo/httpbin's inbound side, 3 a minute
    assert "envoy.filters.http.local_ratelimit" in limited and '"tokensPerFill": 3' in limited
    assert '"fillInterval": "60s"' in limited
    assert "local_ratelimit" not in httpbin


def test_unmeshed_pods_have_no_proxy_config(capsys: pytest.CaptureFixture[str]) -> None:
    for pod in ("ingress-nginx/ingress-nginx-controller-0", "org/httpbin-0"):
        ran = meshcp(capsys, "compile", pod, "--source", str(EXAMPLE))
        assert ran.status != 0, (pod, ran)
        assert "mesh" in ran.err, (pod, ran)
