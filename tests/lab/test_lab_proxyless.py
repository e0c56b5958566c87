"""Proxyless gRPC pods beside sidecar pods in a real lab: network namespaces, iptables for
the sidecar pods only, grpcio in the pods, one set of SMI policies.

Namespace `rpc`: two gRPC servers of identity `greeter`, both answering
`/meshtest.Echo/Who` (a generic handler: no generated code) with their name and the
caller's certificate names — `sc-greeter`, a plain gRPC server behind its sidecar, and
`px-greeter`, a proxyless xDS server (`meshcp.dev/proxyless: grpc`). Clients of identity
`client` (allowed by a TrafficTarget on `/meshtest.Echo/.*`) and `intruder` (no
TrafficTarget), each once proxyless and once with a sidecar. Upstreams are not pruned
(this lab's MeshConfig), so a denied call reaches the server, whose side of the mesh
(the sidecar's RBAC, or gRPC's own from xDS) answers PERMISSION_DENIED.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.driver import BOOKSTORE, LabDriver, bookstore_lab

PORT = 50051
SPIFFE_CLIENT = "spiffe://cluster.local/ns/rpc/sa/client"

#: `server NAME [--xds]`: the echo service on 0.0.0.0:50051, plain (behind a sidecar) or
#: an xDS server (its listener, mTLS and RBAC from the controller).
#: `client TARGET COUNT [--xds]`: COUNT calls; one JSON line: answers, failures by code.
APP = """\
import json
import os
import sys
import threading
from collections import Counter
from concurrent import futures

os.environ.setdefault("GRPC_DNS_RESOLVER", "native")  # the pod's /etc/hosts
import grpc

METHOD = "/meshtest.Echo/Who"


def serve(name, xds):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), xds=xds)

    def who(request, context):
        auth = context.auth_context()
        peer = sorted(v.decode() for v in auth.get("x509_subject_alternative_name", []))
        return json.dumps({"name": name, "peer": peer}).encode()

    handler = grpc.method_handlers_generic_handler(
        "meshtest.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server.add_generic_rpc_handlers((handler,))
    if xds:
        credentials = grpc.xds_server_credentials(grpc.insecure_server_credentials())
        server.add_secure_port("0.0.0.0:50051", credentials)
    else:
        server.add_insecure_port("0.0.0.0:50051")
    server.start()
    print("serving", name, "xds" if xds else "plain", flush=True)
    threading.Event().wait()


def calls(target, count, xds):
    if xds:
        credentials = grpc.xds_channel_credentials(grpc.local_channel_credentials())
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    answers, peers, failures, details = Counter(), set(), Counter(), []
    with channel:
        who = channel.unary_unary(METHOD)
        for index in range(count):
            try:
                answer = json.loads(who(b"", timeout=20, wait_for_ready=index == 0))
                answers[answer["name"]] += 1
                peers.update(answer["peer"])
            except grpc.RpcError as error:
                failures[error.code().name] += 1
                details.append(error.details())
    found = {"answers": answers, "failures": failures, "peers": sorted(peers), "details": details[:3]}
    print(json.dumps(found))


if sys.argv[1] == "server":
    serve(sys.argv[2], "--xds" in sys.argv)
else:
    calls(sys.argv[2], int(sys.argv[3]), "--xds" in sys.argv)
"""


def _server(*args: str) -> str:
    return ", ".join(f'"{part}"' for part in (sys.executable, "apps/grpc_echo.py", "server", *args))


def _pod(name: str, account: str, proxyless: bool, command: str) -> str:
    annotations = "\n  annotations: {meshcp.dev/proxyless: grpc}" if proxyless else ""
    app = name.rsplit("-", 1)[0]
    return f"""\
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: rpc
  labels: {{app: {app}}}{annotations}
spec:
  serviceAccountName: {account}
  containers:
  - name: app
    command: [{command}]
    ports: [{{name: grpc, containerPort: {PORT}}}]
"""


def _service(name: str) -> str:
    return f"""\
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: rpc}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: grpc, port: {PORT}, targetPort: grpc}}]
"""


IDLE = '"sleep", "infinity"'  # a client pod's own process: the test execs its calls
MANIFESTS = (
    """\
apiVersion: v1
kind: Namespace
metadata: {name: rpc, labels: {meshcp.dev/monitored-by: meshcp}}
"""
    + "".join(
        f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: rpc}}\n"
        for sa in ("greeter", "client", "intruder")
    )
    + """\
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: echo, namespace: rpc}
spec:
  matches:
  - {name: echo, pathRegex: /meshtest.Echo/.*}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: client-to-greeter, namespace: rpc}
spec:
  destination: {kind: ServiceAccount, name: greeter, namespace: rpc}
  sources: [{kind: ServiceAccount, name: client, namespace: rpc}]
  rules: [{kind: HTTPRouteGroup, name: echo, matches: [echo]}]
"""
    + _service("sc-greeter")
    + _service("px-greeter")
    + _pod("sc-greeter-0", "greeter", False, _server("sc-greeter"))
    + _pod("px-greeter-0", "greeter", True, _server("px-greeter", "--xds"))
    + _pod("px-client-0", "client", True, IDLE)
    + _pod("px-intruder-0", "intruder", True, IDLE)
    + _pod("sc-client-0", "client", False, IDLE)
    + _pod("sc-intruder-0", "intruder", False, IDLE)
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    meshconfig = (BOOKSTORE / "meshconfig.yaml").read_text() + "  pruneUnreachableUpstreams: false\n"
    extra = {"rpc.yaml": MANIFESTS, "apps/grpc_echo.py": APP, "meshconfig.yaml": meshconfig}
    yield from bookstore_lab(tmp_path_factory.mktemp("proxyless"), extra=extra)


def calls(lab: LabDriver, pod: str, target: str, count: int, xds: bool) -> dict[str, Any]:
    app = str(lab.directory / "apps" / "grpc_echo.py")
    argv = [sys.executable, app, "client", target, str(count), *(["--xds"] if xds else [])]
    return lab.exec_json(f"rpc/{pod}", *argv)


def test_the_pods_run_proxyless_or_with_a_sidecar(lab: LabDriver) -> None:
    pods = {f"{p['namespace']}/{p['name']}": p for p in lab.status()["pods"]}
    for name in ("px-greeter-0", "px-client-0", "px-intruder-0"):
        pod = pods[f"rpc/{name}"]
        assert [c["name"] for c in pod["containers"]] == ["app"], pod
        assert pod["sidecar"].startswith("proxyless"), pod
    for name in ("sc-greeter-0", "sc-client-0"):
        pod = pods[f"rpc/{name}"]
        assert [c["name"] for c in pod["containers"]] == ["app", "envoy"], pod


def test_a_proxyless_client_calls_a_sidecar_server(lab: LabDriver) -> None:
    target = f"xds:///sc-greeter.rpc.svc.cluster.local:{PORT}"
    result = calls(lab, "px-client-0", target, 3, xds=True)
    assert result["answers"] == {"sc-greeter": 3}, result
    assert not result["failures"], result
    # The sidecar terminated mTLS: its application sees a plain-text caller.
    assert result["peers"] == [], result
    denied = calls(lab, "px-intruder-0", target, 2, xds=True)
    assert denied["failures"] == {"PERMISSION_DENIED": 2}, denied
    assert not denied["answers"], denied


def test_a_sidecar_client_calls_a_proxyless_server(lab: LabDriver) -> None:
    target = f"px-greeter.rpc.svc.cluster.local:{PORT}"
    result = calls(lab, "sc-client-0", target, 3, xds=False)
    assert result["answers"] == {"px-greeter": 3}, result
    assert not result["failures"], result
    # gRPC's own TLS saw the sidecar's mesh certificate.
    assert SPIFFE_CLIENT in result["peers"], result
    denied = calls(lab, "sc-intruder-0", target, 2, xds=False)
    assert denied["failures"] == {"PERMISSION_DENIED": 2}, denied
    assert not denied["answers"], denied


def test_proxyless_to_proxyless_and_sidecar_to_sidecar_keep_working(lab: LabDriver) -> None:
    result = calls(lab, "px-client-0", f"xds:///px-greeter.rpc.svc.cluster.local:{PORT}", 2, xds=True)
    assert result["answers"] == {"px-greeter": 2}, result
    result = calls(lab, "sc-client-0", f"sc-greeter.rpc.svc.cluster.local:{PORT}", 2, xds=False)
    assert result["answers"] == {"sc-greeter": 2}, result
