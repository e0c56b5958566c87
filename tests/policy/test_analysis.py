"""`policy.analysis`: every problem the policy builder reports gets a code of its own (none
falls through to MCP0900), and the checks the builder cannot make are made."""

from __future__ import annotations

from pathlib import Path

import yaml

from meshcp.model.parse import parse_object
from meshcp.model.state import MeshState, Problem
from meshcp.policy.analysis import analyze, merged_problems
from meshcp.policy.build import build_policies
from meshcp.policy.findings import CODES, Finding

MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {meshcp.dev/monitored-by: meshcp}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web, meshcp.dev/proxy-uuid: same}}
spec: {serviceAccountName: web, containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, meshcp.dev/proxy-uuid: same}}
spec: {serviceAccountName: web}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: admin}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 10.96.0.2, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: UDPRoute
metadata: {name: dns, namespace: shop}
spec: {matches: {ports: [53]}}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: udp, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: web}
  sources: [{kind: ServiceAccount, name: web}]
  rules: [{kind: UDPRoute, name: dns}, {kind: TCPRoute, name: none}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: a, namespace: shop}
spec: {service: web, backends: [{service: web-v2, weight: 0}]}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: b, namespace: shop}
spec: {service: web-v2, backends: [{service: web, weight: 0}], matches: [{kind: HTTPRouteGroup, name: gone}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: gone-1, namespace: shop, labels: {kubernetes.io/service-name: gone}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.9]}]
---
apiVersion: config.meshcp.dev/v1alpha1
kind: MeshConfig
metadata: {name: meshcp}
spec: {trustDomain: example.org}
---
apiVersion: config.meshcp.dev/v1alpha1
kind: MeshConfig
metadata: {name: other}
spec: {}
"""


def _state() -> MeshState:
    objects = [parse_object(doc) for doc in yaml.safe_load_all(MESH)]
    return MeshState({obj.ref: obj for obj in objects})


def test_every_builder_problem_has_its_own_code() -> None:
    state = _state()
    built = build_policies(state, "cluster.local")
    assert len(built.problems) >= 6  # the mesh above must keep the builder busy
    findings = analyze(state, "cluster.local")
    assert [f for f in findings if f.code == "MCP0900"] == []
    for problem in built.problems:
        assert any(f.ref == problem.ref for f in findings), problem
    codes = {f.code for f in findings}
    assert {
        "MCP0107",
        "MCP0205",
        "MCP0206",
        "MCP0207",
        "MCP0208",
        "MCP0303",
        "MCP0103",
        "MCP0404",
        "MCP0108",
    } <= codes


def test_an_unknown_builder_problem_is_kept_as_mcp0900() -> None:
    problem = Problem(parse_object(yaml.safe_load(MESH.split("---")[1])).ref, "something new")
    assert merged_problems([problem], []) == [Finding("MCP0900", problem.ref, "something new")]


def test_every_code_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for code in CODES.values():
        assert f"| {code.code} | {code.severity} |" in text, code
