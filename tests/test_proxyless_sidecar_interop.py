"""Proxyless gRPC and sidecars in one mesh, on loopback, under the same TrafficTarget
(`client` may call `greeter`'s `/meshtest.Echo/.*`; `intruder` may not):

- a proxyless grpcio client (xDS from a running `meshcp serve`) calls a gRPC server
  behind a real Envoy whose inbound listener is the one compiled for that pod: grpcio
  sends no SNI, so it lands on the port's chain without SNI (`lds._without_sni`), with
  the mesh's mTLS and RBAC;
- a real Envoy with the upstream cluster compiled for a sidecar client calls a
  proxyless xDS server: the server accepts the cluster's TLS (its SNI, the mesh
  certificate) and applies its own RBAC.

Each Envoy is served its compiled resources by a test ADS server (`tests.support.ads`),
with its certificates from the controller's CA (`meshcp bootstrap --proxyless` of a pod of
the same identity). Loopback instead of iptables: the inbound listener binds the pod's
address and target port itself (no original destination to restore), and the client
Envoy's listener takes plain gRPC from the test, routing by authority as
`rds-outbound.<port>` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import betterproto2
import grpc

from meshcp.cli import offline
from meshcp.compile import cds, lds, naming, rds, sds
from meshcp.identity import Identity
from meshcp.policy.build import build_policies
from meshcp.policy.types import ProxyPolicy
from meshcp.sidecar.envoy_parts import cluster_load_assignment, socket_address
from tests.support import free_port
from tests.support.ads import LISTENER
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.proxyless import ADDRESSES, APP, PORT, ROOT, Mesh, running_mesh
from tests.support.resources import http_listener
from tests.test_envoy_osm_policies import proxy
from tests.test_proxyless_grpc import SPIFFE_CLIENT, assert_no_nack

pytestmark = REAL_ENVOY

ECHO_ADDRESS = "127.0.0.6"
ECHO = f"xds:///echo.shop.svc.cluster.local:{PORT}"
METHOD = "/meshtest.Echo/Who"


def sidecar_pods(echo_port: int) -> str:
    """`echo` (port 50051, grpc) served by a sidecar pod of identity `greeter`, and sidecar
    pods of the client identities (no services)."""
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: echo}}
  ports: [{{name: grpc, port: {PORT}, targetPort: grpc}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-0, namespace: shop, labels: {{app: echo}}}}
spec:
  serviceAccountName: greeter
  containers: [{{name: app, image: app, ports: [{{name: grpc, containerPort: {echo_port}}}]}}]
status:
  podIP: {ECHO_ADDRESS}
  conditions: [{{type: Ready, status: "True"}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: buyer-0, namespace: shop, labels: {{app: buyer}}}}
spec:
  serviceAccountName: client
  containers: [{{name: app, image: app}}]
status:
  podIP: 127.0.0.7
  conditions: [{{type: Ready, status: "True"}}]
"""


async def sidecar_policy(mesh: Mesh, account: str, serving: bool) -> ProxyPolicy:
    """The sidecar class of `shop/<account>`: the one with inbound ports (`serving`) or
    without, as the controller compiles it from the same manifests."""
    policies = build_policies(await offline.load(mesh.source))
    identity = Identity("shop", account)
    return next(p for p in policies.classes.values() if p.identity == identity and bool(p.inbound) == serving)


async def secrets(mesh: Mesh, pod: str) -> list[betterproto2.Message]:
    """`service-cert` and `root-cert` of `pod`'s identity, from the controller's CA."""
    directory = (await mesh.bootstrap(pod)).parent
    cert, key, ca = ((directory / name).read_text() for name in ("cert.pem", "key.pem", "ca.pem"))
    return [sds.service_cert(cert, key), sds.root_cert(ca)]


@asynccontextmanager
async def plain_app(mesh: Mesh, port: int) -> AsyncIterator[None]:
    """The application behind the echo pod's sidecar: plain gRPC on 127.0.0.1:port."""
    log = (mesh.root / "echo-app.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *APP, "server", "--plain", "--address", "127.0.0.1", "--port", str(port), "--name", "echo",
        stdout=log, stderr=log, cwd=ROOT,
    )  # fmt: skip
    log.close()
    mesh.processes.append(process)  # stopped by the mesh in any case
    yield


async def test_a_proxyless_client_calls_a_server_behind_a_sidecar(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, prune=False) as mesh:
        echo_port = free_port()
        mesh.write("sidecars.yaml", sidecar_pods(echo_port))
        policy = await sidecar_policy(mesh, "greeter", serving=True)
        (port,) = [p for p in policy.inbound if p.service.name == "echo"]
        listener = lds.inbound_listener(policy)
        # The chain grpcio lands on: the port's, without server names.
        assert f"inbound-no-sni:{echo_port}" in {c.name for c in listener.filter_chains}
        listener.name = LISTENER
        listener.address = socket_address(ECHO_ADDRESS, echo_port)
        listener.listener_filters = [f for f in listener.listener_filters if "original_dst" not in f.name]
        messages = [
            listener,
            *rds.inbound_routes(policy),
            cds.local_cluster(port),
            *await secrets(mesh, "greeter-v1-0"),
        ]
        types = ("cds", "lds", "rds")  # no EDS: the local cluster is static
        async with plain_app(mesh, echo_port), proxy(*messages, types=types) as (envoy, _):
            result = await mesh.calls("client-0", ECHO, 3)
            assert result["answers"] == {"echo": 3}, (result, envoy.log_tail())
            assert await envoy.stat(f"http.inbound.{PORT}.rbac.allowed") >= 3

            result = await mesh.calls("intruder-0", ECHO, 2, warmup=False)
            assert result["failures"] == {"PERMISSION_DENIED": 2}, result
            assert await envoy.stat(f"http.inbound.{PORT}.rbac.denied") == 2
        assert_no_nack(mesh)


async def call_through(envoy_port: int, service: str) -> tuple[str, str]:
    """One echo call through the client Envoy's listener: (status, answer)."""
    authority = f"{service}.shop.svc.cluster.local:{PORT}"
    options = [("grpc.default_authority", authority)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{envoy_port}", options=options) as channel:
        try:
            answer = await channel.unary_unary(METHOD)(b"", timeout=20)
        except grpc.aio.AioRpcError as error:
            return error.code().name, error.details() or ""
    return "OK", bytes(answer).decode()


@asynccontextmanager
async def client_sidecar(mesh: Mesh, pod: str) -> AsyncIterator[tuple[EnvoyProcess, int]]:
    """A real Envoy with the upstream clusters and outbound routes compiled for the
    sidecar client class of `shop/client`, the certificates of `pod`'s identity, and the
    proxyless server greeter-v1-0 as `greeter-v1`'s one endpoint."""
    policy = await sidecar_policy(mesh, "client", serving=False)
    clusters = cds.upstream_clusters(policy)
    v1 = naming.cluster("shop", "greeter-v1", PORT)
    server = (ADDRESSES["greeter-v1-0"], mesh.ports["greeter-v1-0"])
    messages = [
        http_listener(LISTENER, 0, naming.outbound_routes(PORT)),
        *rds.outbound_routes(policy),
        *clusters,
        *(cluster_load_assignment(c.name, [server] if c.name == v1 else []) for c in clusters),
        *await secrets(mesh, pod),
    ]
    async with proxy(*messages) as (envoy, port):
        yield envoy, port


async def test_a_sidecar_client_calls_a_proxyless_server(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, prune=False) as mesh:
        mesh.write("sidecars.yaml", sidecar_pods(free_port()))
        await mesh.server("greeter-v1-0", "v1")
        # The server is up once a proxyless client reaches it.
        assert (await mesh.calls("client-0", f"xds:///greeter-v1.shop.svc.cluster.local:{PORT}", 1))[
            "answers"
        ] == {"v1": 1}

        async with client_sidecar(mesh, "client-0") as (envoy, port):
            status, answer = await call_through(port, "greeter-v1")
            assert status == "OK", (answer, envoy.log_tail())
            # the server saw the sidecar's mesh certificate over TLS
            assert '"name": "v1"' in answer and SPIFFE_CLIENT in answer and '"tls"' in answer, answer
        async with client_sidecar(mesh, "intruder-0") as (envoy, port):
            status, _ = await call_through(port, "greeter-v1")
            assert status == "PERMISSION_DENIED"
        assert_no_nack(mesh)
