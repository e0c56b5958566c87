"""`meshcp install`, `check`, `uninstall`, and the real `helm install`/`helm uninstall` of the
chart, against a real API server (tests/support/kube.py).

Each test gets an API server of its own (a few seconds to start): installing and uninstalling
the whole chart would otherwise take objects away from the tests that share the session's
`installed` one. cert-manager's CRDs are the conftest's stand-ins.

Nothing runs the Deployments' pods here (no kubelet, no controller-manager), so `check` must
report them unavailable and the webhook's Service without endpoints; the test then writes
what a kubelet and cert-manager would (Deployment status, an EndpointSlice, the caBundle) and
shows every check passing.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from meshcp.install.check import CONTROLLER
from meshcp.install.manifests import default_manifests, render
from tests.cli.runner import EXAMPLE
from tests.kube.conftest import CERT_MANAGER_KINDS, cert_manager_stand_ins
from tests.support import eventually
from tests.support.envoy import EnvoyProcess
from tests.support.helm import CHART, NAMESPACE, RELEASE, helm
from tests.support.kube import ApiServer, write_serving_certificate
from tests.support.pod_netns import PodNetwork, pod_network


@pytest.fixture
def cluster() -> Iterator[ApiServer]:
    with ApiServer() as api:
        api.apply(cert_manager_stand_ins())
        api.kubectl(
            "wait",
            "--for=condition=established",
            *(f"crd/{plural}.cert-manager.io" for _, plural in CERT_MANAGER_KINDS),
        )
        yield api


def meshcp(api: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshcp.cli.main", *args, "--kubeconfig", str(api.admin_kubeconfig)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _exists(api: ApiServer, document: dict[str, object]) -> bool:
    result = api.kubectl("get", "-f", "-", "-o", "name", input=json.dumps(document), check=False)
    if result.returncode == 0:
        return True
    assert "NotFound" in result.stderr, result.stderr
    return False


def _checks(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    return {entry["check"]: (entry["status"], entry["detail"]) for entry in json.loads(result.stdout)}


def test_check_pre_finds_the_cluster_ready_for_meshcp(cluster: ApiServer) -> None:
    result = meshcp(cluster, "check", "--pre", "-o", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {name: status for name, (status, _) in _checks(result).items()} == {
        "Kubernetes API reachable": "ok",
        "Kubernetes version supported": "ok",
        "permission to install": "ok",
        "cert-manager installed": "ok",
    }


def test_without_cert_manager_check_pre_and_install_name_it() -> None:
    with ApiServer() as api:
        checked = meshcp(api, "check", "--pre")
        installed = meshcp(api, "install")
    assert checked.returncode == 1
    failed = [line for line in checked.stdout.splitlines() if line.startswith("fail")]
    assert len(failed) == 1
    assert "cert-manager installed" in failed[0] and "cert-manager is not installed" in failed[0]
    assert checked.stderr == "meshcp: error: 1 of 4 checks failed\n"
    assert installed.returncode == 1
    assert len(installed.stderr.splitlines()) == 1
    assert installed.stderr.startswith(
        "meshcp: error: certificate.cert-manager.io/meshcp-webhook-ca -n meshcp-system:"
    )
    assert "404" in installed.stderr and "(is cert-manager installed?" in installed.stderr


def test_install_check_and_uninstall(cluster: ApiServer, tmp_path: Path) -> None:
    installed = meshcp(cluster, "install", "--set", "controller.replicas=2")
    assert installed.returncode == 0, installed.stderr
    documents = default_manifests()
    assert len(installed.stdout.splitlines()) == len(documents)
    assert all(line.endswith(" created") for line in installed.stdout.splitlines()), installed.stdout
    assert all(_exists(cluster, document) for document in documents)
    controller = cluster.get("-n", NAMESPACE, "deployment/meshcp-controller", "--show-managed-fields")
    assert controller["spec"]["replicas"] == 2
    assert {entry["manager"] for entry in controller["metadata"]["managedFields"]} == {"meshcp-install"}

    again = meshcp(cluster, "install", "--set", "controller.replicas=2")
    assert again.returncode == 0, again.stderr
    assert all(line.endswith(" applied") for line in again.stdout.splitlines()), again.stdout
    assert cluster.get("-n", NAMESPACE, "deployment/meshcp-controller")["metadata"]["generation"] == 1

    # No kubelet runs the pods: check says so, one line per failed check.
    checked = meshcp(cluster, "check", "-o", "json")
    assert checked.returncode == 1
    checks = _checks(checked)
    failed = {name: detail for name, (status, detail) in checks.items() if status == "fail"}
    assert set(failed) == {
        "meshcp-controller Deployment available",
        "meshcp-injector Deployment available",
        "webhook meshcp-injector has a Service with ready endpoints",
        "webhook meshcp-injector caBundle valid",
        "proxies connected and in sync",
    }, checked.stdout
    assert failed["meshcp-controller Deployment available"].startswith(
        "deployment meshcp-system/meshcp-controller has 0 of 2 replicas available (no pod of it exists"
    )
    assert "has no ready endpoints" in failed["webhook meshcp-injector has a Service with ready endpoints"]
    assert "has no caBundle" in failed["webhook meshcp-injector caBundle valid"]
    assert checks["CRDs installed and served"] == ("ok", "10 served")
    assert checks["RBAC of meshcp-controller in place"][0] == "ok"
    assert checks["RBAC of meshcp-injector in place"][0] == "ok"
    assert failed["proxies connected and in sync"] == (
        "no meshcp-controller pod is ready to ask (kubectl -n meshcp-system get pods "
        "-l app.kubernetes.io/component=controller,app.kubernetes.io/name=meshcp)"
    )
    assert checked.stderr == "meshcp: error: 5 of 10 checks failed\n"
    table = meshcp(cluster, "check")
    assert len([line for line in table.stdout.splitlines() if line.startswith("fail")]) == 5

    # What the kubelet and cert-manager would write: then every check passes but the
    # proxies' (no pod runs; test_check_asks_every_ready_controller_pod runs one).
    for name, replicas in (("meshcp-controller", 2), ("meshcp-injector", 2)):
        status = {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}
        cluster.kubectl(
            "-n", NAMESPACE, "patch", f"deployment/{name}", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip
    cluster.apply(
        [
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "meshcp-injector-test",
                    "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": "meshcp-injector"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}}],
                "ports": [{"name": "https-webhook", "port": 9090, "protocol": "TCP"}],
            }
        ]
    )
    ca_path, _, _ = write_serving_certificate(tmp_path, "webhook", ["meshcp-injector.meshcp-system.svc"])
    bundle = base64.b64encode(ca_path.read_bytes()).decode()
    cluster.kubectl(
        "patch", "mutatingwebhookconfiguration/meshcp-injector", "--type=json",
        "-p", json.dumps([{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}]),
    )  # fmt: skip
    healthy = _checks(meshcp(cluster, "check", "-o", "json"))
    assert healthy.pop("proxies connected and in sync")[0] == "fail"
    assert {status for status, _ in healthy.values()} == {"ok"}, healthy

    # The webhook is gone first, then everything but the CRDs and the namespace.
    removed = meshcp(cluster, "uninstall")
    assert removed.returncode == 0, removed.stderr
    lines = removed.stdout.splitlines()
    assert lines[0] == "mutatingwebhookconfiguration.admissionregistration.k8s.io/meshcp-injector deleted"
    kept = {
        d["metadata"]["name"] for d in documents if d["kind"] in ("CustomResourceDefinition", "Namespace")
    }
    for document in documents:
        assert _exists(cluster, document) == (document["metadata"]["name"] in kept), document["metadata"]
    assert not meshcp(cluster, "uninstall").returncode  # again: everything "not found", no error

    everything = meshcp(cluster, "uninstall", "--delete-cluster-wide-resources")
    assert everything.returncode == 0, everything.stderr
    crds = [d for d in documents if d["kind"] == "CustomResourceDefinition"]
    # CRD deletion waits for the API server to drop their stored objects: over a minute
    # on a loaded machine. kubectl gives up at 180 s, before the subprocess's own bound.
    names = [f"crd/{d['metadata']['name']}" for d in crds]
    cluster.kubectl("wait", "--for=delete", "--timeout=180s", *names, timeout=200.0)


def test_install_check_and_uninstall_in_another_namespace(cluster: ApiServer) -> None:
    """`-n`: every object where `helm install -n` puts it (tests/test_install.py compares the
    render), and what check asks about (RBAC of the moved subjects) is found there."""
    installed = meshcp(cluster, "install", "-n", "mesh-other")
    assert installed.returncode == 0, installed.stderr
    documents = render([], namespace="mesh-other")
    assert "namespace/mesh-other created" in installed.stdout.splitlines()
    assert all(_exists(cluster, document) for document in documents)
    assert not _exists(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})

    checked = meshcp(cluster, "check", "-n", "mesh-other", "-o", "json")
    checks = _checks(checked)
    assert checks["namespace exists"] == ("ok", "mesh-other")
    assert checks["RBAC of meshcp-controller in place"][0] == "ok", checks
    assert checks["RBAC of meshcp-injector in place"][0] == "ok", checks
    assert checks["meshcp-controller Deployment available"][1].startswith(
        "deployment mesh-other/meshcp-controller has 0 of 1 replicas available"
    )
    assert (
        "service mesh-other/meshcp-injector"
        in checks["webhook meshcp-injector has a Service with ready endpoints"][1]
    )
    # The default namespace is not where it is: check -n meshcp-system says so.
    elsewhere = _checks(meshcp(cluster, "check", "-o", "json"))
    assert elsewhere["namespace exists"] == ("fail", "namespace meshcp-system does not exist")

    removed = meshcp(cluster, "uninstall", "-n", "mesh-other")
    assert removed.returncode == 0, removed.stderr
    for document in documents:
        kept = document["kind"] in ("CustomResourceDefinition", "Namespace")
        assert _exists(cluster, document) == kept, document["metadata"]


def _controller_pod(cluster: ApiServer, name: str, ip: str) -> None:
    """A Pod of the controller's Deployment (its template) as a kubelet reports it: Running,
    Ready, at `ip`."""
    [deployment] = [
        d for d in default_manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == CONTROLLER
    ]
    template = deployment["spec"]["template"]
    metadata = {"name": name, "namespace": NAMESPACE, "labels": template["metadata"]["labels"]}
    cluster.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}])
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    cluster.kubectl(
        "-n", NAMESPACE, "patch", f"pod/{name}", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def _wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while text not in path.read_text(errors="replace"):
        assert process.poll() is None, f"meshcp serve ended ({process.returncode}):\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{path.read_text()}"
        time.sleep(0.1)


async def test_check_asks_every_ready_controller_pod(cluster: ApiServer, tmp_path: Path) -> None:
    """A real `meshcp serve` at a pod IP (a network namespace: the API server refuses to
    proxy to loopback) with a real Envoy streaming from it, asked through the API server's
    pod proxy on its HTTPS port; a second Ready pod whose address answers nothing fails the
    check by name."""
    assert meshcp(cluster, "install").returncode == 0
    with pod_network() as pod:
        source, state = tmp_path / "bookstore", tmp_path / "state"
        with _serving_in(pod, tmp_path, source, state) as xds_port:
            _controller_pod(cluster, "meshcp-controller-0", pod.ip)
            checks = _checks(meshcp(cluster, "check", "-o", "json"))
            assert checks["proxies connected and in sync"] == (
                "ok",
                "0 proxies connected, 0 in sync (1 controller pod(s) asked)",
            )

            # A sidecar of the bookstore, on this host, streaming from the controller's pod.
            out = tmp_path / "proxy"
            bootstrapped = meshcp_offline(
                "bootstrap", "bookstore-v1-0", "-n", "bookstore", "--source", str(source),
                "--state-dir", str(state), "--out", str(out), "--xds-address", f"{pod.ip}:{xds_port}",
            )  # fmt: skip
            assert bootstrapped.returncode == 0, bootstrapped.stderr
            bootstrap = json.loads((out / "bootstrap.json").read_text())
            bootstrap["admin"]["address"]["socketAddress"]["portValue"] = 0
            async with EnvoyProcess(bootstrap):

                async def synced() -> bool:
                    found = _checks(meshcp(cluster, "check", "-o", "json"))
                    return found["proxies connected and in sync"] == (
                        "ok",
                        "1 proxies connected, 1 in sync (1 controller pod(s) asked)",
                    )

                await eventually(synced, 60, "check to find the Envoy connected and in sync")

            # The host's end of the pair: a Ready pod there refuses the connection.
            _controller_pod(cluster, "meshcp-controller-1", pod.host_ip)
            result = meshcp(cluster, "check", "-o", "json")
            status, detail = _checks(result)["proxies connected and in sync"]
            assert (status, result.returncode) == ("fail", 1)
            assert detail.startswith("GET /sync of pod meshcp-system/meshcp-controller-1: "), detail


def meshcp_offline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshcp.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextmanager
def _serving_in(pod: PodNetwork, tmp_path: Path, source: Path, state: Path) -> Iterator[int]:
    """`meshcp serve` in the pod's network namespace, xDS and HTTPS (`api`, 9443) at the pod
    IP, on a copy of the bookstore at `source`; its xDS port. Stopped on exit."""
    _, cert, key = write_serving_certificate(tmp_path, "api", [pod.ip])
    shutil.copytree(EXAMPLE, source)
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        serve = subprocess.Popen(
            pod.exec(
                sys.executable, "-m", "meshcp", "serve", "--source", str(source),
                "--state-dir", str(state), "--xds-address", f"{pod.ip}:0",
                "--http-address", "127.0.0.1:0", "--debug-address", "127.0.0.1:0",
                "--api-address", f"{pod.ip}:9443", "--api-tls-cert", str(cert), "--api-tls-key", str(key),
            ),
            stderr=stderr,
        )  # fmt: skip
    try:
        _wait_for_text(log, f"serving HTTPS on {pod.ip}:9443", serve)
        xds = re.search(rf"serving xDS on {re.escape(pod.ip)}:(\d+)", log.read_text())
        assert xds is not None, log.read_text()
        yield int(xds[1])
    finally:
        serve.terminate()
        serve.wait(30)


def _kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "none"}}],
        "contexts": [{"name": "u", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "u",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("answers", [False, True], ids=["refused", "silent"])
def test_check_of_an_unreachable_api_ends_without_a_traceback(tmp_path: Path, answers: bool) -> None:
    """A port that refuses, and one that accepts but never answers (the call's timeout ends
    it): the first check fails saying why, the others are skipped, no traceback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if answers:
            listener.listen(8)
        kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{listener.getsockname()[1]}")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshcp.cli.main",
                "check",
                "--kubeconfig",
                str(kubeconfig),
                "--timeout",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr == "meshcp: error: 1 of 10 checks failed\n"
    lines = result.stdout.splitlines()
    assert lines[1].startswith("fail     Kubernetes API reachable"), result.stdout
    assert ("no answer from" if answers else "cannot reach") in lines[1]
    assert len(lines) == 11 and all(line.startswith("skipped") for line in lines[2:])


def test_helm_install_and_uninstall(cluster: ApiServer) -> None:
    kubeconfig = ("--kubeconfig", str(cluster.admin_kubeconfig))
    installed = helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "--set", "createNamespace=false", *kubeconfig,
    )  # fmt: skip
    assert "STATUS: deployed" in installed.stdout
    releases = yaml.safe_load(helm("list", "--namespace", NAMESPACE, "-o", "yaml", *kubeconfig).stdout)
    assert [(r["name"], r["status"]) for r in releases] == [(RELEASE, "deployed")]
    documents = [d for d in default_manifests() if d["kind"] != "Namespace"]
    assert all(_exists(cluster, document) for document in documents)
    # Helm's objects are those `meshcp install` makes (what check finds, it finds here too).
    checked = meshcp(cluster, "check", "-o", "json")
    assert {n for n, (s, _) in _checks(checked).items() if s == "ok"} >= {
        "CRDs installed and served",
        "RBAC of meshcp-controller in place",
        "RBAC of meshcp-injector in place",
    }

    helm("uninstall", RELEASE, "--namespace", NAMESPACE, *kubeconfig)
    # Helm keeps the CRDs of crds/ (deleting them would delete every mesh object).
    for document in documents:
        expected = document["kind"] == "CustomResourceDefinition"
        assert _exists(cluster, document) == expected, document["metadata"]
    assert yaml.safe_load(helm("list", "--namespace", NAMESPACE, "-o", "yaml", *kubeconfig).stdout) == []
