"""examples/osm, exactly as shipped, in a real lab (network namespaces, iptables, Envoy
sidecars over mTLS): each behaviour its README promises, asked as its README asks it,
through `meshcp lab exec` with the example's own client (`apps/client.py`).

OSM's demos, with OSM's names: curl's Egress reaches httpbin.org (a pod outside the mesh)
and fortio, without one, does not; the IngressBackend admits the unmeshed ingress
controller and refuses another unmeshed pod; curl's Retry turns two 503s into a 200 that
the server counted as three attempts, while fortio sees the 503; demo/httpbin's local rate
limit answers 429 above three requests a minute.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.driver import ROOT, LabDriver, lab_leftovers, require_lab

EXAMPLE = ROOT / "examples" / "osm"
CLIENT = str(EXAMPLE / "apps" / "client.py")
CURL, FORTIO = "curl/curl-0", "demo/fortio-0"
INGRESS, OUTSIDE = "ingress-nginx/ingress-nginx-controller-0", "org/httpbin-0"
HTTPBIN = "http://httpbin.httpbin:14001"
#: The fields of OSM's MeshConfig the README lists as not supported (reported, ignored).
UNSUPPORTED = {
    "spec.sidecar.envoyWindowsImage",
    "spec.sidecar.initContainerImage",
    "spec.observability.osmLogLevel",
    "spec.certificate.certKeyBitSize",
}


@pytest.fixture(scope="module")
def lab() -> Iterator[LabDriver]:
    """The example's own directory (not a copy): what a user runs."""
    require_lab()
    leftovers = lab_leftovers()
    if leftovers:
        pytest.fail(f"a lab is already on this machine (meshcp lab down removes it): {leftovers}")
    driver = LabDriver(EXAMPLE)
    try:
        driver.up()
        yield driver
    finally:
        driver.down()


def _get(
    lab: LabDriver, pod: str, url: str, *, count: int = 1, headers: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`apps/client.py URL` in `pod`: the count of each status and the last body."""
    return lab.exec_json(
        pod, sys.executable, CLIENT, url, "--count", str(count), *(f"--header={h}" for h in headers)
    )


def _attempts(lab: LabDriver, pod: str, port: int, path: str) -> int:
    """What the httpbin app of `pod` counted for `path`, asked on the pod's loopback (not
    intercepted: no attempt, no token of a rate limit)."""
    found = _get(lab, pod, f"http://127.0.0.1:{port}/attempts{path}")
    assert found["statuses"] == {"200": 1}, found
    count = json.loads(found["last"])["attempts"]
    assert isinstance(count, int)
    return count


def test_the_example_runs_with_osms_names_and_only_the_unsupported_fields_reported(lab: LabDriver) -> None:
    status = lab.status()
    pods = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
    meshed = {"curl/curl-0", "demo/fortio-0", "demo/httpbin-0", "httpbin/httpbin-0"}
    assert set(pods) == meshed | {INGRESS, OUTSIDE}
    for key, pod in pods.items():
        assert pod["phase"] == "Running", key
        if key in meshed:  # OSM's label, with the mesh named osm
            assert pod["meshed"] and pod["sidecar"] == "ready", key
        else:
            assert not pod["meshed"] and pod["sidecar"] == "-", key
    assert status["problems"] == [], json.dumps(status["problems"])
    # OSM's MeshConfig fields meshcp has no equivalent for: reported once each, by name.
    log = lab.meshcp("lab", "logs", "controller").stdout
    reported = {line for line in log.splitlines() if "not supported by meshcp" in line}
    assert {field for field in UNSUPPORTED if any(field in line for line in reported)} == UNSUPPORTED, (
        reported
    )
    assert len(reported) == len(UNSUPPORTED), reported


def test_egress_lets_curl_reach_httpbin_org_and_nobody_else(lab: LabDriver) -> None:
    allowed = _get(lab, CURL, "http://httpbin.org/get", count=2)
    assert allowed["statuses"] == {"200": 2}, allowed
    assert json.loads(allowed["last"])["served_by"] == "org/httpbin-0"
    # another host on the same port: curl's own sidecar answers 403
    other = _get(lab, CURL, "http://httpbin.org/get", headers=("Host=example.com",))
    assert other["statuses"] == {"403": 1}, other
    # fortio has no Egress: its connection is closed, never answered
    refused = _get(lab, FORTIO, "http://httpbin.org/get")
    assert not {"200", "403"} & set(refused["statuses"]), refused
    assert _attempts(lab, OUTSIDE, 80, "/get") == 2


def test_ingress_through_the_ingress_backend_reaches_httpbin_and_a_direct_unmeshed_call_is_refused(
    lab: LabDriver,
) -> None:
    through = _get(lab, OUTSIDE, "http://ingress-nginx-controller.ingress-nginx/ingress/through", count=2)
    assert through["statuses"] == {"200": 2}, through
    assert json.loads(through["last"])["served_by"] == "httpbin/httpbin-0"
    direct = _get(lab, INGRESS, f"{HTTPBIN}/ingress/direct")
    assert direct["statuses"] == {"200": 1}, direct
    refused = _get(lab, OUTSIDE, f"{HTTPBIN}/ingress/stranger")
    assert refused["statuses"] == {"403": 1}, refused
    assert _attempts(lab, "httpbin/httpbin-0", 14001, "/ingress/through") == 2
    assert _attempts(lab, "httpbin/httpbin-0", 14001, "/ingress/direct") == 1
    assert _attempts(lab, "httpbin/httpbin-0", 14001, "/ingress/stranger") == 0


def test_the_retry_turns_two_503s_into_a_success_for_curl_only(lab: LabDriver) -> None:
    retried = _get(lab, CURL, f"{HTTPBIN}/fail/2/curl")
    assert retried["statuses"] == {"200": 1}, retried
    assert json.loads(retried["last"])["attempt"] == 3
    assert _attempts(lab, "httpbin/httpbin-0", 14001, "/fail/2/curl") == 3
    # fortio is not the Retry's source: the first 503 is its answer
    seen = _get(lab, FORTIO, f"{HTTPBIN}/fail/2/fortio")
    assert seen["statuses"] == {"503": 1}, seen
    assert _attempts(lab, "httpbin/httpbin-0", 14001, "/fail/2/fortio") == 1


def test_the_rate_limit_answers_429_above_three_requests_a_minute(lab: LabDriver) -> None:
    result = _get(lab, FORTIO, "http://httpbin.demo:14001/get", count=10)
    statuses = result["statuses"]
    assert set(statuses) == {"200", "429"}, result
    # Three tokens a minute: ten requests in a row get three, or six when the minute's
    # refill happens to fall among them.
    assert statuses["200"] in (3, 6), result
    assert result["last"] == "local_rate_limited", result
    # What was refused never reached the app.
    assert _attempts(lab, "demo/httpbin-0", 14001, "/get") == statuses["200"]


def test_the_readme_promises_what_these_tests_check() -> None:
    readme = (EXAMPLE / "README.md").read_text()
    assert "meshcp lab up examples/osm" in readme
    for field in UNSUPPORTED:
        assert f"`{field}`" in readme, field
    assert Path(CLIENT).is_file()
