"""The bookstore in a real lab: network namespaces, iptables interception, Envoy sidecars
as UID 1500, `meshcp serve` in the node namespace. Driven through the `meshcp lab` CLI.

The tests share one lab (starting one takes seconds) and run in file order: the changes
some of them apply are undone before they end, and the last one takes the lab down.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from meshcp.lab import layout
from meshcp.lab.processes import running
from tests.lab.driver import PROBE, LabDriver, bookstore_lab, lab_leftovers, wait_for

BOOKSTORE = "http://bookstore.bookstore:14001"
BUYER = "bookbuyer/bookbuyer-0"
THIEF = "bookthief/bookthief-0"
BUYER_HEADERS = ("client-app=bookbuyer", "user-agent=Go-http-client/1.1")
OUTSIDE = "10.244.9.10"
#: The issue's bound for a policy change to take effect after `lab apply`.
APPLY_DEADLINE = 5.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    yield from bookstore_lab(tmp_path_factory.mktemp("bookstore"))


def _handshakes(lab: LabDriver, pod: str) -> int:
    """Inbound TLS handshakes the pod's sidecar completed (its own admin stats)."""
    stats = lab.exec_json(pod, sys.executable, str(PROBE), "admin", "/stats?filter=ssl.handshake")["body"]
    match = re.search(r"listener\.0\.0\.0\.0_15003\.ssl\.handshake: (\d+)", stats)
    return int(match[1]) if match else 0


def test_up_reports_every_pod_running_with_ready_sidecars(lab: LabDriver) -> None:
    status = lab.status()
    pods = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
    assert set(pods) >= {
        BUYER,
        THIEF,
        "bookstore/bookstore-v1-0",
        "bookstore/bookstore-v2-0",
        "outside/web-0",
    }
    for key, pod in pods.items():
        assert pod["phase"] == "Running", key
        assert all(c["running"] for c in pod["containers"]), key
        if key.startswith("outside/"):
            assert not pod["meshed"] and pod["sidecar"] == "-"
        else:
            assert pod["meshed"] and pod["sidecar"] == "ready", key
            assert pod["last_ack"] is not None
    assert pods["outside/web-0"]["ip"] == OUTSIDE
    assert status["controller"]["reachable"] is True
    assert status["problems"] == []


def test_bookbuyer_reaches_bookstore_over_mtls_and_the_app_sees_plaintext(lab: LabDriver) -> None:
    result = lab.http(BUYER, f"{BOOKSTORE}/books-bought", count=10, headers=BUYER_HEADERS)
    # The probe counts a 200 whose body does not say the app saw plain HTTP separately.
    assert result["statuses"] == {"200": 10}, result
    # On the wire it was TLS: the server sidecars' inbound listener did the handshakes
    # (the client sidecar pools its connections, so there are fewer than requests).
    assert _handshakes(lab, "bookstore/bookstore-v1-0") > 0
    assert _handshakes(lab, "bookstore/bookstore-v2-0") > 0
    # And only TLS: plain HTTP straight to the pod from outside the mesh gets no answer.
    v1 = next(p["ip"] for p in lab.status()["pods"] if p["name"] == "bookstore-v1-0")
    plain = lab.http("outside/web-0", f"http://{v1}:14001/books-bought", headers=BUYER_HEADERS)
    assert "200" not in plain["statuses"], plain


def test_traffic_split_shares_requests_75_25(lab: LabDriver) -> None:
    result = lab.http(BUYER, f"{BOOKSTORE}/buy-a-book/new", count=200)
    assert result["statuses"] == {"200": 200}, result
    v1 = result["served_by"].get("bookstore-v1-0", 0)
    # 75 % of 200 with a binomial spread: 3 standard deviations are about 18 requests.
    assert 150 - 25 <= v1 <= 150 + 25, result


def test_bookthief_is_refused_with_403(lab: LabDriver) -> None:
    result = lab.http(THIEF, f"{BOOKSTORE}/books-bought", count=5, headers=("client-app=bookthief",))
    assert result["statuses"] == {"403": 5}, result
    # Routes bookbuyer may use only with matching headers or methods are denied too.
    denied = lab.http(BUYER, f"{BOOKSTORE}/update-books-bought", method="POST", headers=BUYER_HEADERS)
    assert denied["statuses"] == {"403": 1}, denied


def test_tcp_service_allowed_source_echoes_and_denied_source_is_reset(lab: LabDriver) -> None:
    allowed = lab.tcp("bookwarehouse/bookwarehouse-0", "mysql.bookwarehouse", 3306)
    assert allowed == {"echoed": True, "error": None}
    denied = lab.tcp(THIEF, "mysql.bookwarehouse", 3306)
    # The server sidecar's network RBAC closes the mTLS connection before a byte reaches the
    # app; Envoy 1.40's tcp_proxy hands that close to the client as a FIN (an RST where the
    # close was one). Either way the connection ends at once and nothing is echoed.
    assert denied["echoed"] is False
    assert denied["error"] in ("ConnectionResetError", "closed"), denied


def test_policy_change_takes_effect_within_seconds_of_lab_apply(lab: LabDriver) -> None:
    url = f"{BOOKSTORE}/buy-a-book/new"
    assert lab.http(THIEF, url)["statuses"] == {"403": 1}
    allow_thief = (
        "  sources:\n  - kind: ServiceAccount\n    name: bookbuyer\n    namespace: bookbuyer\n"
        "  - kind: ServiceAccount\n    name: bookthief\n    namespace: bookthief\n"
    )
    original = (lab.directory / "smi.yaml").read_text()
    lab.edit(
        "smi.yaml",
        lambda text: text.replace(
            "  sources:\n  - kind: ServiceAccount\n    name: bookbuyer\n    namespace: bookbuyer\n",
            allow_thief,
            1,
        ),
    )
    try:
        started = time.monotonic()
        lab.apply()
        remaining = APPLY_DEADLINE - (time.monotonic() - started)
        wait_for(
            lambda: lab.http(THIEF, url)["statuses"] == {"200": 1}, max(remaining, 0.1), "bookthief allowed"
        )
    finally:
        (lab.directory / "smi.yaml").write_text(original)
        lab.apply()
    wait_for(lambda: lab.http(THIEF, url)["statuses"] == {"403": 1}, APPLY_DEADLINE, "bookthief denied again")


def test_broken_manifest_is_reported_and_changes_nothing(lab: LabDriver) -> None:
    broken = lab.directory / "smi.yaml"
    original = broken.read_text()
    broken.write_text(original.replace("kind: TrafficTarget", "kind: TrafficTarget\n  : [", 1))
    try:
        output = lab.apply()
        assert re.search(r"smi\.yaml: not valid YAML: line \d+", output), output
        assert "keeping its last good objects" in output
        assert lab.http(BUYER, f"{BOOKSTORE}/books-bought", headers=BUYER_HEADERS)["statuses"] == {"200": 1}
        assert lab.http(THIEF, f"{BOOKSTORE}/books-bought")["statuses"] == {"403": 1}
    finally:
        broken.write_text(original)
        lab.apply()


def test_egress_is_refused_unless_meshconfig_enables_passthrough(lab: LabDriver) -> None:
    assert lab.tcp(BUYER, OUTSIDE, 8080)["echoed"] is False
    # A port excluded by annotation bypasses the sidecar, and so the egress policy.
    assert lab.tcp("bookbuyer/egress-client-0", OUTSIDE, 9999) == {"echoed": True, "error": None}
    assert lab.tcp("bookbuyer/egress-client-0", OUTSIDE, 8080)["echoed"] is False
    lab.edit(
        "meshconfig.yaml", lambda text: text.replace("egressPassthrough: false", "egressPassthrough: true")
    )
    try:
        lab.apply()
        wait_for(
            lambda: lab.tcp(BUYER, OUTSIDE, 8080)["echoed"] is True, APPLY_DEADLINE, "egress passthrough"
        )
    finally:
        lab.edit(
            "meshconfig.yaml",
            lambda text: text.replace("egressPassthrough: true", "egressPassthrough: false"),
        )
        lab.apply()
    wait_for(lambda: lab.tcp(BUYER, OUTSIDE, 8080)["echoed"] is False, APPLY_DEADLINE, "egress refused again")


def test_unreachable_upstreams_answer_403_at_the_source(lab: LabDriver) -> None:
    """By default (MeshConfig `pruneUnreachableUpstreams`, on) bookthief gets no cluster of
    the bookstore at all and its calls get a 403 from its own sidecar; turned off, it gets
    every service and the 403 comes from the bookstore's sidecar. bookbuyer is served
    either way."""

    def thief_has_bookstore() -> bool:
        clusters = lab.exec_json(THIEF, sys.executable, str(PROBE), "admin", "/clusters")["body"]
        return "bookstore/bookstore|14001::" in clusters

    assert not thief_has_bookstore()
    denied = lab.http(THIEF, f"{BOOKSTORE}/books-bought", count=3)
    assert denied["statuses"] == {"403": 3}, denied
    assert lab.tcp(THIEF, "mysql.bookwarehouse", 3306)["echoed"] is False
    lab.edit(
        "meshconfig.yaml",
        lambda text: text.replace(
            "egressPassthrough: false", "egressPassthrough: false\n  pruneUnreachableUpstreams: false"
        ),
    )
    try:
        lab.apply()
        wait_for(thief_has_bookstore, APPLY_DEADLINE, "bookthief gets every service")
        denied = lab.http(THIEF, f"{BOOKSTORE}/books-bought", count=3)
        assert denied["statuses"] == {"403": 3}, denied
        allowed = lab.http(BUYER, f"{BOOKSTORE}/books-bought", count=3, headers=BUYER_HEADERS)
        assert allowed["statuses"] == {"200": 3}, allowed
    finally:
        lab.edit("meshconfig.yaml", lambda text: text.replace("\n  pruneUnreachableUpstreams: false", ""))
        lab.apply()
    wait_for(lambda: not thief_has_bookstore(), APPLY_DEADLINE, "bookthief pruned again")


def test_unmeshed_pod_reaches_a_cluster_ip_through_kube_proxy_rules(lab: LabDriver) -> None:
    # outside/web-0 has no sidecar: its connection to web's ClusterIP (port 80) is DNATed
    # by the node to an endpoint (itself, port 8080), and the replies come back through it.
    assert lab.tcp("outside/web-0", "web.outside", 80) == {"echoed": True, "error": None}
    # To a meshed service the DNAT works too, but the server's sidecar wants mTLS.
    result = lab.tcp("outside/web-0", "mysql.bookwarehouse", 3306)
    assert result["echoed"] is False


def test_exec_runs_in_the_pod_with_its_environment_and_logs_show_output(lab: LabDriver) -> None:
    out = lab.meshcp(
        "lab", "exec", BUYER, "--", "sh", "-c", 'echo "$POD_NAME $POD_NAMESPACE $POD_IP $(id -u)"'
    )
    ip = next(p["ip"] for p in lab.status()["pods"] if p["name"] == "bookbuyer-0")
    assert out.stdout.split() == ["bookbuyer-0", "bookbuyer", ip, "0"]
    logs = lab.meshcp("lab", "logs", "bookstore/bookstore-v1-0").stdout
    assert "listening on 14001" in logs
    envoy_logs = lab.meshcp("lab", "logs", "bookstore/bookstore-v1-0", "-c", "envoy").stdout
    assert "starting main dispatch loop" in envoy_logs
    missing = lab.meshcp("lab", "exec", "nowhere/pod", "--", "true", check=False)
    assert missing.returncode == 1
    assert "no pod nowhere/pod in the lab" in missing.stderr and "Traceback" not in missing.stderr


def test_second_lab_up_is_refused(lab: LabDriver) -> None:
    result = lab.meshcp("lab", "up", str(lab.directory), check=False)
    assert result.returncode == 1
    assert "a lab is already running" in result.stderr


def test_scaling_a_deployment_with_lab_apply(lab: LabDriver) -> None:
    deployment = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: bookreader
  namespace: bookbuyer
spec:
  replicas: {replicas}
  template:
    metadata:
      labels:
        app: bookreader
    spec:
      serviceAccountName: bookbuyer
      containers:
      - name: reader
        command: ["python3", "-c", "import time; time.sleep(1e9)"]
"""
    path = lab.directory / "reader.yaml"
    path.write_text(deployment.format(replicas=2))
    try:
        lab.apply()
        pods = {p["name"]: p for p in lab.status()["pods"] if p["name"].startswith("bookreader-")}
        assert sorted(pods) == ["bookreader-0", "bookreader-1"]
        assert all(p["sidecar"] == "ready" for p in pods.values())
        result = lab.http("bookbuyer/bookreader-1", f"{BOOKSTORE}/buy-a-book/new")
        assert result["statuses"] == {"200": 1}, result
        path.write_text(deployment.format(replicas=1))
        output = lab.apply()
        assert "pod bookbuyer/bookreader-1 deleted" in output
        names = [p["name"] for p in lab.status()["pods"] if p["name"].startswith("bookreader-")]
        assert names == ["bookreader-0"]
        assert (
            f"{layout.PREFIX}-bookbuyer.bookreader-1"
            not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        )
    finally:
        path.unlink()
        lab.apply()


def test_restarting_the_controller_keeps_traffic_flowing_and_proxies_reconnect(lab: LabDriver) -> None:
    before = lab.status()["controller"]
    os.kill(before["pid"], signal.SIGKILL)
    # Envoy keeps its last configuration while the controller is gone.
    result = lab.http(BUYER, f"{BOOKSTORE}/books-bought", count=5, headers=BUYER_HEADERS)
    assert result["statuses"] == {"200": 5}, result

    seen: list[dict[str, object]] = []

    def reconnected() -> bool:
        status = lab.status()
        seen[:] = [status]
        controller = status["controller"]
        return (
            controller["restarts"] > before["restarts"]
            and controller["reachable"]
            and all(p["sidecar"] in ("ready", "-") for p in status["pods"])
        )

    try:
        wait_for(reconnected, 60, "every sidecar reconnected to the restarted controller")
    except AssertionError as error:
        raise AssertionError(f"{error}; last status: {seen}") from None
    assert lab.http(THIEF, f"{BOOKSTORE}/books-bought")["statuses"] == {"403": 1}


def test_down_removes_every_namespace_process_and_file(lab: LabDriver) -> None:
    pids = [c["pid"] for p in lab.status()["pods"] for c in p["containers"]]
    assert lab.down().strip() == "lab removed"
    assert lab_leftovers() == []
    for pid in pids:
        assert not running(pid), f"container process {pid} survived lab down"
    assert lab.down().strip() == "no lab to remove"
    status = lab.meshcp("lab", "status", check=False)
    assert status.returncode == 1 and "no lab is running" in status.stderr
