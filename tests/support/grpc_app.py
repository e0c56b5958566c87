"""A proxyless gRPC application for the tests: grpcio with xDS, in a process of its own
(gRPC reads `GRPC_XDS_BOOTSTRAP` once per process).

    python -m tests.support.grpc_app server --address IP --port P --name NAME
        an xDS-enabled server (`grpc.server(..., xds=True)`, xDS server credentials with an
        insecure fallback that the control plane's mTLS replaces) on IP:P, answering
        `/meshtest.Echo/Who` with NAME, and the standard health service.
    python -m tests.support.grpc_app server --plain --address IP --port P --name NAME
        the same service without xDS, in plain text: an application behind a sidecar.
    python -m tests.support.grpc_app client --target xds:///... --count N [--no-warmup]
        N sequential calls; prints one JSON line: answers by name and failures by code.
    python -m tests.support.grpc_app client --target ... --until FILE
        calls until FILE exists, then prints the same JSON line.

No generated code: the echo method takes and returns raw bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from collections import Counter
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

METHOD = "/meshtest.Echo/Who"


def serve(address: str, port: int, name: str, plain: bool = False) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), xds=not plain)

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        """NAME, and who called as the TLS layer saw it: the caller's SANs."""
        auth = context.auth_context()
        peer = sorted(v.decode() for v in auth.get("x509_subject_alternative_name", []))
        security = [v.decode() for v in auth.get("transport_security_type", [])]
        return json.dumps({"name": name, "peer": peer, "security": security}).encode()

    handler = grpc.method_handlers_generic_handler(
        "meshtest.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server.add_generic_rpc_handlers((handler,))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if plain:
        server.add_insecure_port(f"{address}:{port}")
    else:
        credentials = grpc.xds_server_credentials(grpc.insecure_server_credentials())
        server.add_secure_port(f"{address}:{port}", credentials)
    server.start()
    print(f"started {name} on {address}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()


def calls(target: str, count: int, until: str | None, timeout: float, warmup: bool, method: str) -> None:
    """The first call waits for the channel to be ready (`warmup`: the servers may still be
    starting); every other call fails as an application's would. Prints `{"seen": NAME}`
    the first time a server answers, and the counts at the end."""
    credentials = grpc.xds_channel_credentials(grpc.local_channel_credentials())
    answers: Counter[str] = Counter()
    peers: set[str] = set()
    failures: Counter[str] = Counter()
    details: list[str] = []
    with grpc.secure_channel(target, credentials) as channel:
        who = channel.unary_unary(method)
        done = 0
        while (until is not None and not os.path.exists(until)) or (until is None and done < count):
            try:
                reply = who(b"", timeout=timeout, wait_for_ready=warmup and done == 0)
                # Another method than the echo (the health service) answers its own bytes.
                answer: dict[str, Any] = (
                    json.loads(reply) if method == METHOD else {"name": method, "security": [], "peer": []}
                )
                if answer["name"] not in answers:
                    print(json.dumps({"seen": answer["name"]}), flush=True)
                answers[answer["name"]] += 1
                peers.add(" ".join([*answer["security"], *answer["peer"]]))
            except grpc.RpcError as error:
                failures[error.code().name] += 1
                if len(details) < 5:
                    details.append(f"{error.code().name}: {error.details()}")
            done += 1
    print(
        json.dumps({"answers": answers, "failures": failures, "details": details, "peers": sorted(peers)}),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server")
    server.add_argument("--address", default="0.0.0.0", help="the pod's IP (or a wildcard)")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--name", required=True)
    server.add_argument("--plain", action="store_true", help="no xDS, plain text (behind a sidecar)")
    client = commands.add_parser("client")
    client.add_argument("--target", required=True)
    client.add_argument("--count", type=int, default=1)
    client.add_argument("--until")
    client.add_argument("--timeout", type=float, default=20.0)
    client.add_argument("--no-warmup", dest="warmup", action="store_false")
    client.add_argument("--method", default=METHOD, help="full method name; the request is empty")
    args = parser.parse_args()
    if args.command == "server":
        serve(args.address, args.port, args.name, args.plain)
    else:
        calls(args.target, args.count, args.until, args.timeout, args.warmup, args.method)


if __name__ == "__main__":
    main()
