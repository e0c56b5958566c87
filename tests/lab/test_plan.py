"""The lab's plan: manifests in, pods/addresses/rules out (pure; no root needed)."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcp.injector.template import INIT_CONTAINER, SIDECAR_CONTAINER
from meshcp.lab import layout
from meshcp.lab.addresses import Allocation
from meshcp.lab.manifests import Manifest, expand_deployments, read_directory
from meshcp.lab.plan import (
    CONTROLLER_JOB,
    SIDECAR_JOB,
    LabPlan,
    PlanContext,
    plan,
    prometheus_config,
    prometheus_targets,
)
from meshcp.lab.pods import PROXY_USER

HERE = Path("/manifests")


def _context() -> PlanContext:
    counter = itertools.count(1)
    return PlanContext(
        pod_dir=lambda ns, name: f"/run/lab/pods/{ns}.{name}",
        path="/lab/bin:/usr/bin",
        new_uuid=lambda: str(uuid.UUID(int=next(counter))),
    )


def _manifest(body: dict[str, Any]) -> Manifest:
    return Manifest(body, f"{HERE}/m.yaml:1", HERE / "m.yaml")


def _namespace(name: str, meshed: bool = True) -> dict[str, Any]:
    labels = {"meshcp.dev/monitored-by": "meshcp"} if meshed else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _pod(name: str, ns: str = "shop", **extra: Any) -> dict[str, Any]:
    container = {
        "name": "app",
        "command": ["python3", "app.py"],
        "args": ["--port", "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            {"name": "GREETING", "value": "hi"},
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
    }
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "shop"}},
        "spec": {"serviceAccountName": "shop", "containers": [container]},
    }
    body.update(extra)
    return body


def _service(name: str = "shop", ns: str = "shop", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"app": "shop"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            **spec,
        },
    }


def _plan(*bodies: dict[str, Any], allocation: Allocation | None = None) -> LabPlan:
    manifests, problems = expand_deployments([_manifest(b) for b in bodies])
    assert problems == []
    return plan(manifests, allocation or Allocation(), _context())


def test_meshed_pod_is_injected_with_the_webhooks_mutation() -> None:
    result = _plan(_namespace("shop"), _pod("shop-0"))
    pod = result.pods["shop/shop-0"]
    assert pod.sidecar is not None
    assert [c.name for c in pod.init] == [INIT_CONTAINER]
    assert "iptables-restore --noflush" in pod.init[0].argv[-1]
    assert pod.init[0].uid == 0
    names = [c.name for c in pod.containers]
    assert names == ["app", SIDECAR_CONTAINER]
    envoy = pod.containers[1]
    assert envoy.uid == PROXY_USER and envoy.gid == PROXY_USER
    assert envoy.argv[:3] == ("envoy", "--config-path", "/run/lab/pods/shop.shop-0/bootstrap.json")
    # The rendered pod carries the proxy UUID the controller matches the node id against.
    labels = pod.manifest["metadata"]["labels"]
    assert labels["meshcp.dev/proxy-uuid"] == pod.sidecar.proxy.proxy_uuid
    assert pod.node_id.startswith(pod.sidecar.proxy.proxy_uuid + ".sidecar.shop.shop.")


def test_containers_get_command_args_env_and_the_pods_variables() -> None:
    pod = _plan(_namespace("shop"), _pod("shop-0")).pods["shop/shop-0"]
    app = pod.containers[0]
    assert app.argv == ("python3", "app.py", "--port", "8080")
    env = dict(app.env)
    assert env["GREETING"] == "hi"
    assert env["MY_IP"] == pod.ip
    assert env["POD_NAME"] == "shop-0" and env["POD_NAMESPACE"] == "shop"
    assert env["POD_IP"] == pod.ip and env["SERVICE_ACCOUNT"] == "shop"
    assert env["PATH"] == "/lab/bin:/usr/bin"
    assert app.cwd == str(HERE) and app.uid == 0


def test_unmeshed_pod_runs_without_sidecar() -> None:
    pod = _plan(_namespace("shop", meshed=False), _pod("shop-0")).pods["shop/shop-0"]
    assert pod.sidecar is None and pod.init == ()
    assert [c.name for c in pod.containers] == ["app"]


def test_proxyless_pod_gets_grpcs_bootstrap_and_no_sidecar_or_iptables() -> None:
    body = _pod("px-0")
    body["metadata"]["annotations"] = {"meshcp.dev/proxyless": "grpc"}
    result = _plan(_namespace("shop"), body)
    pod = result.pods["shop/px-0"]
    assert pod.sidecar is None and pod.init == ()
    assert pod.proxyless is not None
    assert [c.name for c in pod.containers] == ["app"]
    # The injector's Secret, as files in the pod's own directory that gRPC is pointed at.
    assert pod.proxyless.directory == "/run/lab/pods/shop.px-0"
    env = dict(pod.containers[0].env)
    assert env["GRPC_XDS_BOOTSTRAP"] == "/run/lab/pods/shop.px-0/bootstrap.json"
    assert pod.proxyless.template.xds_host == "10.244.0.1"
    labels = pod.manifest["metadata"]["labels"]
    assert labels["meshcp.dev/proxy-uuid"] == pod.proxyless.proxy.proxy_uuid
    assert pod.manifest["metadata"]["annotations"]["meshcp.dev/proxyless"] == "grpc"
    assert pod.node_id.startswith(pod.proxyless.proxy.proxy_uuid + ".sidecar.shop.shop.")
    # no Envoy to scrape
    assert json.loads(prometheus_targets(result.pods)) == []


def test_prometheus_scrapes_only_meshed_pods_at_their_prometheus_listener() -> None:
    result = _plan(
        _namespace("shop"),
        _pod("shop-0"),
        _pod("shop-1"),
        _namespace("plain", meshed=False),
        _pod("p-0", "plain"),
    )
    groups = json.loads(prometheus_targets(result.pods))
    assert groups == [
        {
            "targets": [f"{result.pods[f'shop/{name}'].ip}:15010"],
            "labels": {"namespace": "shop", "pod": name},
        }
        for name in ("shop-0", "shop-1")
    ]
    assert json.loads(prometheus_targets({})) == []


def test_prometheus_config_scrapes_the_controller_and_the_sidecar_file() -> None:
    config = yaml.safe_load(prometheus_config("/lab/prometheus/sidecars.json", "127.0.0.1:9091"))
    assert config["global"]["scrape_interval"] == "2s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[CONTROLLER_JOB]["static_configs"] == [{"targets": ["127.0.0.1:9091"]}]
    assert jobs[CONTROLLER_JOB]["metrics_path"] == "/metrics"
    assert jobs[SIDECAR_JOB]["file_sd_configs"] == [{"files": ["/lab/prometheus/sidecars.json"]}]
    assert jobs[SIDECAR_JOB]["metrics_path"] == "/stats/prometheus"


def test_addresses_are_kept_across_applies_and_requested_ones_honoured() -> None:
    first = _plan(
        _namespace("shop"),
        _pod("a", status={"podIP": "10.244.7.7"}),
        _pod("b"),
        _service(clusterIP="10.96.5.5"),
        _service("other"),
    )
    assert first.pods["shop/a"].ip == "10.244.7.7"
    assert first.pods["shop/b"].ip == str(layout.FIRST_POD)
    ips = {s.name: s.cluster_ip for s in first.services}
    assert ips == {"shop": "10.96.5.5", "other": str(layout.FIRST_SERVICE)}
    # A new pod sorted first takes a fresh address; the old ones keep theirs and their UUIDs.
    second = _plan(_namespace("shop"), _pod("0-new"), _pod("a"), _pod("b"), allocation=first.allocation)
    assert second.pods["shop/a"].ip == "10.244.7.7"
    assert second.pods["shop/b"].ip == first.pods["shop/b"].ip
    assert second.pods["shop/0-new"].ip not in {"10.244.7.7", first.pods["shop/b"].ip}
    assert second.allocation.proxy_uuids["shop/a"] == first.allocation.proxy_uuids["shop/a"]
    assert second.pods["shop/a"].fingerprint == first.pods["shop/a"].fingerprint


def test_cluster_ip_outside_the_lab_range_is_replaced_and_reported() -> None:
    result = _plan(_namespace("shop"), _service(clusterIP="192.168.1.1"))
    assert result.services[0].cluster_ip == str(layout.FIRST_SERVICE)
    assert any("192.168.1.1 is outside the lab's service range" in p for p in result.problems)


def test_deployment_becomes_numbered_pods() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {
            "replicas": 3,
            "template": {"metadata": {"labels": {"app": "shop"}}, "spec": _pod("x")["spec"]},
        },
    }
    result = _plan(_namespace("shop"), deployment)
    assert sorted(result.pods) == ["shop/shop-0", "shop/shop-1", "shop/shop-2"]
    assert len({p.ip for p in result.pods.values()}) == 3


def test_kube_proxy_rules_spread_a_cluster_ip_over_the_endpoints() -> None:
    result = _plan(_namespace("shop", meshed=False), _pod("a"), _pod("b"), _service(clusterIP="10.96.1.1"))
    rules = result.service_rules
    a, b = result.pods["shop/a"].ip, result.pods["shop/b"].ip
    assert "-d 10.96.1.1/32 -p tcp --dport 80" in rules
    assert f"--probability 0.50000 -j DNAT --to-destination {a}:8080" in rules
    assert f"-j DNAT --to-destination {b}:8080" in rules
    assert "-A PREROUTING -j MESHCP-LAB-SERVICES" in rules
    assert "-A PREROUTING" not in result.pod_service_rules
    assert "-A OUTPUT -j MESHCP-LAB-SERVICES" in result.pod_service_rules
    assert rules.startswith("*nat\n") and rules.endswith("COMMIT\n")


def test_hosts_resolve_service_names_and_short_names_only_in_the_same_namespace() -> None:
    result = _plan(
        _namespace("shop"),
        _namespace("web"),
        _pod("a"),
        _pod("w", ns="web"),
        _service(clusterIP="10.96.1.1"),
    )
    shop_hosts = result.hosts["shop/a"]
    web_hosts = result.hosts["web/w"]
    assert "10.96.1.1\tshop.shop.svc.cluster.local shop.shop.svc shop.shop shop\n" in shop_hosts
    assert "10.96.1.1\tshop.shop.svc.cluster.local shop.shop.svc shop.shop\n" in web_hosts
    assert f"{result.pods['web/w'].ip}\tw\n" in web_hosts


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"spec": {"containers": [{"name": "app", "image": "nginx"}]}}, "has no command"),
        ({"metadata": {"name": "p", "namespace": "nowhere"}}, "namespace nowhere is not declared"),
        (
            {
                "metadata": {
                    "name": "p",
                    "namespace": "shop",
                    "annotations": {"meshcp.dev/outbound-port-exclusion-list": "99999"},
                }
            },
            "is not a port",
        ),
        (
            {"metadata": {"name": "p", "namespace": "shop", "annotations": {"meshcp.dev/proxyless": "java"}}},
            "meshcp.dev/proxyless='java': must be 'grpc'",
        ),
    ],
)
def test_bad_pods_are_reported_and_skipped(change: dict[str, Any], problem: str) -> None:
    bad = {**_pod("p"), **change}
    result = _plan(_namespace("shop"), bad, _pod("good"))
    assert "shop/good" in result.pods and len(result.pods) == 1
    assert any(problem in p and "m.yaml:1" in p for p in result.problems), result.problems


def test_invalid_smi_object_is_reported_with_its_location() -> None:
    target = {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget", "metadata": {"name": "t"}}
    result = _plan(_namespace("shop"), target)
    assert any(p.startswith("TrafficTarget default/t (/manifests/m.yaml:1): ") for p in result.problems)


def test_read_directory_reports_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n")
    (tmp_path / "bad.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: [\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.yml").write_text("kind: A\n---\nkind: B\n")
    manifests, problems = read_directory(tmp_path)
    assert [(m.kind, m.location.rsplit("/", 1)[1]) for m in manifests] == [
        ("Namespace", "good.yaml:1"),
        ("A", "two.yml:1"),
        ("B", "two.yml:3"),
    ]
    assert list(problems) == [tmp_path / "bad.yaml"]
    assert "bad.yaml: not valid YAML: line" in problems[tmp_path / "bad.yaml"]
