"""deploy/networkpolicy.yaml: the controller's pods admit the sidecars on the xDS port,
Prometheus on the metrics port and anyone on the TrafficMetrics API port (the API server,
which no selector can name), and nothing else: in particular never the debug port, which
the Deployment keeps on loopback. (The real API server accepts it: tests/kube/test_deploy.py.)"""

from __future__ import annotations

from meshcp.model.meshconfig import MESH_LABEL
from meshcp.model.osm_names import ALIASES
from tests.support.deploy import Manifest, _args, _container_port, _find

POLICY = "meshcp-controller"


def _rules() -> list[Manifest]:
    rules: list[Manifest] = _find("NetworkPolicy", POLICY, file="networkpolicy.yaml")["spec"]["ingress"]
    return rules


def _admitted_port(rule: Manifest) -> int:
    (port,) = rule["ports"]
    assert port["protocol"] == "TCP"
    return _container_port(_find("Deployment", "meshcp-controller"), port["port"])


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_policy_selects_the_controller_pods_for_ingress() -> None:
    spec = _find("NetworkPolicy", POLICY)["spec"]
    deployment = _find("Deployment", "meshcp-controller")
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]


def test_each_port_admits_only_who_must_reach_it() -> None:
    args = _args(_find("Deployment", "meshcp-controller"))
    mesh_name = _find("MeshConfig", "meshcp")["spec"]["meshName"]
    by_port = {_admitted_port(rule): rule.get("from") for rule in _rules()}
    assert by_port == {
        _port(args.xds_address): [
            {"namespaceSelector": {"matchLabels": {MESH_LABEL: mesh_name}}},
            {"namespaceSelector": {"matchLabels": {ALIASES[MESH_LABEL]: mesh_name}}},
        ],
        _port(args.http_address): [
            {
                "namespaceSelector": {},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ],
        _port(args.api_address): None,  # the API server: not a pod (see the file's comment)
    }


def test_the_debug_port_is_on_loopback_and_admitted_from_nowhere() -> None:
    args = _args(_find("Deployment", "meshcp-controller"))
    host, port = args.debug_address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) not in {_admitted_port(rule) for rule in _rules()}
    declared = {
        p["containerPort"]
        for p in _find("Deployment", "meshcp-controller")["spec"]["template"]["spec"]["containers"][0][
            "ports"
        ]
    }
    assert int(port) not in declared
