"""OSM's MeshConfig and OSM's names in a real lab (network namespaces, iptables, Envoy
sidecars over mTLS), written as an OSM cluster carries them.

The bookstore runs with OSM's `osm-mesh-config` (in `osm-system`) turning on
`enablePermissiveTrafficPolicyMode`, and a meshcp MeshConfig that does not set `permissive`:
bookthief, which no TrafficTarget names, reaches the bookstore. When meshcp's MeshConfig then
says `permissive: false`, meshcp's wins and bookthief is refused again, and the controller
reports the override naming both objects. A namespace labelled only with OSM's
`openservicemesh.io/monitored-by` is in the mesh: its pods get sidecars, except the one
annotated with OSM's `openservicemesh.io/sidecar-injection: disabled`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcp.lab import layout
from tests.lab.driver import BOOKSTORE, LabDriver, bookstore_lab, wait_for

THIEF = "bookthief/bookthief-0"
BUYER = "bookbuyer/bookbuyer-0"
URL = "http://bookstore.bookstore:14001/books-bought"
#: `meshcp lab apply` to a changed policy in the sidecars (the bookstore tests' bound).
APPLY_DEADLINE = 60.0

OSM = """\
apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata:
  name: osm-mesh-config
  namespace: osm-system
spec:
  sidecar:
    enablePrivilegedInitContainer: false
    logLevel: error
    tlsMinProtocolVersion: TLSv1_2
  traffic:
    enablePermissiveTrafficPolicyMode: true
    enableEgress: false
  featureFlags:
    enableEgressPolicy: true
---
apiVersion: v1
kind: Namespace
metadata:
  name: osmshop
  labels: {openservicemesh.io/monitored-by: meshcp}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: shop, namespace: osmshop}
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: osmshop}
spec:
  selector: {app: shop}
  ports: [{name: tcp-echo, port: 7000, targetPort: 7000}]
---
apiVersion: v1
kind: Pod
metadata: {name: shop-0, namespace: osmshop, labels: {app: shop}}
spec:
  serviceAccountName: shop
  containers:
  - name: shop
    command: ["python3", "apps/echo.py", "--port", "7000"]
    ports: [{containerPort: 7000}]
    readinessProbe: {tcpSocket: {port: 7000}}
---
apiVersion: v1
kind: Pod
metadata:
  name: plain-0
  namespace: osmshop
  labels: {app: plain}
  annotations: {openservicemesh.io/sidecar-injection: disabled}
spec:
  serviceAccountName: shop
  containers:
  - name: plain
    command: ["python3", "apps/echo.py", "--port", "7001"]
    readinessProbe: {tcpSocket: {port: 7001}}
"""


def _without_permissive(text: str) -> str:
    after = re.sub(r"(?m)^  permissive: false\n", "", text)
    assert after != text, "examples/bookstore/meshconfig.yaml no longer sets permissive: false"
    return after


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    meshconfig = _without_permissive((BOOKSTORE / "meshconfig.yaml").read_text())
    extra = {"osm.yaml": OSM, "meshconfig.yaml": meshconfig}
    yield from bookstore_lab(tmp_path_factory.mktemp("bookstore"), extra=extra)


def _controller_log() -> str:
    root = Path(os.environ.get("MESHCP_LAB_DIR", f"/run/{layout.PREFIX}"))
    return (root / "logs" / "controller.log").read_text(errors="replace")


def test_osm_names_decide_which_pods_get_a_sidecar(lab: LabDriver) -> None:
    status = lab.status()
    assert status["problems"] == [], json.dumps(status["problems"])
    pods = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
    assert pods["osmshop/shop-0"]["meshed"] and pods["osmshop/shop-0"]["sidecar"] == "ready"
    assert not pods["osmshop/plain-0"]["meshed"] and pods["osmshop/plain-0"]["sidecar"] == "-"
    # The OSM-labelled namespace is in the mesh: permissive (OSM's MeshConfig), bookbuyer's
    # sidecar carries the connection to the shop's sidecar over mTLS.
    assert lab.tcp(BUYER, "shop.osmshop", 7000) == {"echoed": True, "error": None}


def test_osm_permissive_mode_lets_an_untargeted_client_through_until_meshcps_says_otherwise(
    lab: LabDriver,
) -> None:
    # No TrafficTarget names bookthief; OSM's MeshConfig makes the mesh permissive.
    assert lab.http(THIEF, URL, count=2)["statuses"] == {"200": 2}
    # meshcp's own MeshConfig now sets permissive: false, and wins.
    lab.edit("meshconfig.yaml", lambda text: text.replace("spec:\n", "spec:\n  permissive: false\n", 1))
    lab.apply()
    wait_for(lambda: lab.http(THIEF, URL)["statuses"] == {"403": 1}, APPLY_DEADLINE, "bookthief refused")
    wait_for(
        lambda: (
            "spec.traffic.enablePermissiveTrafficPolicyMode: true is overridden by MeshConfig meshcp "
            "permissive: false" in _controller_log()
        ),
        APPLY_DEADLINE,
        "the override reported naming both MeshConfigs",
    )
    # OSM's other settings still apply and ask for nothing meshcp lacks: no other report.
    assert "not supported by meshcp" not in _controller_log()
