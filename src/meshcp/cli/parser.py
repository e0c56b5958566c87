"""The `meshcp` argument parser: every command, its options and their value types."""

from __future__ import annotations

import argparse
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from meshcp import __version__
from meshcp.certs.keys import KeySpec
from meshcp.certs.setup import PROVIDERS, default_state_dir
from meshcp.cli.arguments import LOG_LEVELS, Parser, command, output_option, pod_argument, server_option
from meshcp.http.api_tls import API_PORT
from meshcp.injector.template import DEFAULT_INIT_IMAGE
from meshcp.model.durations import parse_duration
from meshcp.sidecar.ports import CONTROLLER_DEBUG_PORT, CONTROLLER_HTTP_PORT, WEBHOOK_PORT, XDS_PORT


def duration(text: str) -> timedelta:
    """`30s`, `10m`, `24h` or `7d` (Go forms such as `1h30m` too); at least a second."""
    try:
        seconds = parse_duration(text.strip(), allow_days=True)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration of at least 1s")
    return timedelta(seconds=seconds)


def mesh_name(text: str) -> str:
    """A mesh's name is a label value (`meshcp.dev/monitored-by: <name>`): a DNS label,
    as MeshConfig's `meshName`."""
    if len(text) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS label (lowercase letters, digits and '-')")
    return text


def key_spec(text: str) -> KeySpec:
    try:
        return KeySpec.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_metrics_api_options(serve: argparse.ArgumentParser) -> None:
    """Where the TrafficMetrics API and /dashboard read, and the HTTPS listener the
    Kubernetes API aggregator calls."""
    serve.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="Prometheus scraping the sidecars, for the TrafficMetrics API and /dashboard (default: none)",
    )
    serve.add_argument(
        "--api-address",
        default=f"127.0.0.1:{API_PORT}",
        help="HTTPS listener of the HTTP endpoint, with --api-tls-cert (default %(default)s)",
    )
    serve.add_argument(
        "--api-tls-cert", type=Path, help="PEM chain of the HTTPS listener, for the API aggregator (reloaded)"
    )
    serve.add_argument("--api-tls-key", type=Path, help="PEM private key for --api-tls-cert (reloaded)")


def _add_serve_options(serve: argparse.ArgumentParser) -> None:
    """The metrics API, leader election among replicas, and the CA."""
    _add_metrics_api_options(serve)
    serve.add_argument(
        "--leader-lease",
        default="",
        metavar="NS/NAME",
        help="with --source kubernetes: the Lease replicas elect a leader with; only the leader "
        "writes to the cluster (default: no election, this replica leads)",
    )
    serve.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="seconds an unrenewed --leader-lease stays held (default %(default)g)",
    )
    _add_ca_options(serve)


def _add_bootstrap(commands: Any) -> None:
    """`meshcp bootstrap`: an Envoy sidecar's bootstrap, or a proxyless gRPC pod's."""
    boot = command(commands, "bootstrap", "write one pod's Envoy bootstrap and xDS client certificate")
    pod_argument(boot)
    boot.add_argument("--source", type=Path, required=True, metavar="DIR", help="directory of manifests")
    boot.add_argument(
        "--xds-address", default=f"127.0.0.1:{XDS_PORT}", help="where the proxy reaches the controller"
    )
    boot.add_argument("--xds-server-name", default="localhost", help="name in the controller's certificate")
    boot.add_argument("--out", type=Path, required=True, help="directory to write into")
    boot.add_argument("--delta", action="store_true", help="use incremental (delta) ADS")
    boot.add_argument(
        "--insecure-xds", action="store_true", help="plaintext xDS (controller runs --insecure-xds)"
    )
    boot.add_argument(
        "--proxyless",
        action="store_true",
        help="write gRPC's xDS bootstrap and certificate files (proxyless gRPC pod) instead of Envoy's",
    )
    boot.add_argument(
        "--refresh",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --proxyless: keep running, issuing and rewriting the certificate files every SECONDS",
    )
    boot.add_argument(
        "--watch-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --proxyless: how often gRPC re-reads the certificate files (default 60)",
    )
    _add_ca_options(boot)


def _add_listeners(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--xds-address", default=f"127.0.0.1:{XDS_PORT}", help="gRPC ADS listener (default %(default)s)"
    )
    serve.add_argument(
        "--http-address",
        default=f"127.0.0.1:{CONTROLLER_HTTP_PORT}",
        help="HTTP listener (default %(default)s)",
    )
    serve.add_argument(
        "--debug-address",
        default=f"127.0.0.1:{CONTROLLER_DEBUG_PORT}",
        help="HTTP listener of /debug: every proxy's name and configuration (default %(default)s)",
    )


def _add_inject_mesh(inject: argparse.ArgumentParser) -> None:
    """Which MeshConfig the injector reads, and the mesh's name in it."""
    inject.add_argument("--mesh-config", default="meshcp", help="name of the MeshConfig object")
    inject.add_argument(
        "--mesh-name",
        type=mesh_name,
        help="the mesh, as `serve --mesh-name` (default: MeshConfig's meshName)",
    )


def _add_serve_source(serve: argparse.ArgumentParser) -> None:
    """What the controller serves: its source, and the mesh's name in it."""
    serve.add_argument(
        "--source", help="directory of manifests to serve (watched), or `kubernetes` to watch the cluster"
    )
    serve.add_argument(
        "--mesh-name",
        type=mesh_name,
        help="the mesh: namespaces labelled meshcp.dev/monitored-by (or OSM's "
        "openservicemesh.io/monitored-by) with it are in it; wins over MeshConfig's meshName "
        "(default: MeshConfig's meshName, else meshcp)",
    )


def _add_xds_limits(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--admission", type=int, default=256, help="new streams configured at once")
    serve.add_argument(
        "--proxyless-dwell",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="least length of each root rotation phase while proxyless gRPC nodes are connected",
    )
    serve.add_argument(
        "--proxyless-renew-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --source kubernetes: look at proxyless gRPC pods' Secrets at least this "
        "often, renewing the certificates due in them",
    )
    serve.add_argument(
        "--send-budget-mib",
        type=int,
        default=64,
        help="MiB of xDS responses being written at once, over all streams (bounds memory)",
    )
    serve.add_argument(
        "--max-connection-age",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="tell an xDS connection to go away after this long (±10%%), so that proxies "
        "reconnect and spread over the replicas (0: never)",
    )


def _add_injector_ca_options(inject: argparse.ArgumentParser) -> None:
    """The webhook's own CA (`--webhook-config`) and the mesh CA's options."""
    inject.add_argument(
        "--webhook-config",
        default="",
        metavar="NAME",
        help="MutatingWebhookConfiguration whose caBundle the injector keeps set to its CA",
    )
    inject.add_argument(
        "--webhook-ca",
        type=Path,
        help="PEM CA for --webhook-config (default: ca.crt beside --tls-cert, else its chain's last)",
    )
    _add_ca_options(inject)


def build_parser() -> Parser:
    parser = Parser(prog="meshcp", description="A service mesh control plane for Envoy.")
    parser.add_argument("--version", action="version", version=f"meshcp {__version__}")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log verbosity")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    serve = command(commands, "serve", "run the controller (ADS server, CA, HTTP endpoint)")
    _add_listeners(serve)
    serve.add_argument("--insecure-xds", action="store_true", help="serve xDS in plaintext (local work only)")
    serve.add_argument(
        "--xds-name",
        action="append",
        dest="xds_names",
        metavar="NAME",
        help="DNS name or IP proxies dial the controller by (repeatable; default localhost and 127.0.0.1)",
    )
    serve.add_argument("--xds-cert", type=Path, help="PEM chain of the xDS server (instead of the mesh CA's)")
    serve.add_argument("--xds-key", type=Path, help="PEM private key for --xds-cert")
    serve.add_argument(
        "--xds-client-ca", type=Path, help="PEM bundle that signs proxies' client certificates"
    )
    _add_xds_limits(serve)
    _add_serve_source(serve)
    _add_serve_options(serve)

    compile_ = command(commands, "compile", "print the Envoy config one pod's proxy would receive")
    pod_argument(compile_)
    compile_.add_argument("--source", type=Path, required=True, metavar="DIR", help="directory of manifests")
    output_option(compile_, ("json", "yaml"), "json")

    _add_bootstrap(commands)

    inject = command(commands, "inject", "run the sidecar injector (HTTPS mutating webhook)")
    inject.add_argument(
        "--tls-cert", type=Path, required=True, help="PEM chain the webhook serves (reloaded)"
    )
    inject.add_argument("--tls-key", type=Path, required=True, help="PEM key for --tls-cert (reloaded)")
    inject.add_argument("--address", default=f"0.0.0.0:{WEBHOOK_PORT}", help="listener")
    inject.add_argument(
        "--xds-address",
        default=f"meshcp-controller.meshcp-system.svc:{XDS_PORT}",
        help="controller, as sidecars dial it",
    )
    inject.add_argument(
        "--xds-server-name", default="", help="name on the controller's certificate (default: its host)"
    )
    inject.add_argument("--xds-trust-bundle", type=Path, help="PEM bundle sidecars trust for the controller")
    inject.add_argument(
        "--init-image",
        default=None,
        help=f"image of the iptables init container (default {DEFAULT_INIT_IMAGE})",
    )
    _add_inject_mesh(inject)
    inject.add_argument("--delta-xds", action="store_true", help="sidecars use incremental (delta) ADS")
    _add_injector_ca_options(inject)

    add_operator_commands(commands)
    _add_lab(commands)
    _add_kpi(commands)
    demo = command(commands, "demo", "run the bookstore mesh in a lab, drive traffic, print a report")
    demo.add_argument("--source", type=Path, default=Path("examples/bookstore"), help="manifests")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds of traffic")
    version = command(commands, "version", "print meshcp's version, and the controller's when it answers")
    server_option(version)
    output_option(version)
    completion = command(commands, "completion", "print a shell completion script (source it)")
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell")
    return parser


def add_operator_commands(commands: Any) -> None:
    """The operator's commands: analyze, proxy, policy, ca, and install/uninstall/check."""
    analyze = command(commands, "analyze", "every problem of a mesh, with its object, field and code")
    _add_mesh_source(analyze)
    analyze.add_argument(
        "-n", "--namespace", default="", help="only objects of this namespace (default: all)"
    )
    analyze.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    output_option(analyze)

    proxy = command(commands, "proxy", "what a running controller sent each proxy")
    proxy_actions = proxy.add_subparsers(
        dest="proxy_command", required=True, metavar="ACTION", parser_class=Parser
    )
    status = command(proxy_actions, "status", "each connected proxy and, per type, whether it is in sync")
    status.add_argument("-n", "--namespace", default="", help="only proxies of this namespace (default: all)")
    server_option(status)
    output_option(status)
    config = command(proxy_actions, "config", "one proxy's configuration as sent (keys never shown)")
    pod_argument(config)
    config.add_argument(
        "--type",
        choices=PROXY_CONFIG_TYPES,
        default="all",
        help="which resources",
    )
    config.add_argument(
        "--envoy", metavar="ADMIN_URL", help="also the proxy's own config_dump (its admin URL), to show drift"
    )
    server_option(config)
    output_option(config, default="json")

    policy = command(commands, "policy", "ask the compiled policy")
    policy_actions = policy.add_subparsers(
        dest="policy_command", required=True, metavar="ACTION", parser_class=Parser
    )
    check = command(policy_actions, "check", "may pod SRC reach pod DST? and which object decides")
    check.add_argument("src", metavar="SRC", help="client pod: NAME (with -n) or NAMESPACE/NAME")
    check.add_argument("dst", metavar="DST", help="server pod: NAME (with -n) or NAMESPACE/NAME")
    check.add_argument("-n", "--namespace", default="default", help="namespace of SRC and DST given as NAME")
    check.add_argument("--port", type=int, help="the destination's service port (default: each port)")
    check.add_argument("--path", help="an HTTP request's path (default: any request)")
    check.add_argument("--method", help="an HTTP request's method (default: any method)")
    check.add_argument(
        "--header", action="append", metavar="NAME:VALUE", help="an HTTP request's header (repeatable)"
    )
    check.add_argument("--source", type=Path, required=True, metavar="DIR", help="directory of manifests")
    output_option(check)

    ca = command(commands, "ca", "inspect or rotate the internal CA")
    ca_actions = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION", parser_class=Parser)
    for name, text in (
        ("show", "the roots (never a key), the rotation phase and the proxies it waits for"),
        ("rotate", "start a root rotation"),
        ("finish-rotation", "stop trusting the old root now, whether or not every proxy moved on"),
    ):
        action = command(ca_actions, name, text)
        action.add_argument(
            "--state-dir", type=Path, default=default_state_dir(), help="the internal CA's state directory"
        )
        action.add_argument(
            "--ca-secret", default="", metavar="NS/NAME", help="the CA's Secret instead of --state-dir"
        )
        _add_kubernetes_access(action)
        server_option(action)
        output_option(action)
        if name == "finish-rotation":
            action.add_argument(
                "--force",
                action="store_true",
                help="even while the controller's workload certificates still come from the old root",
            )

    _add_install(commands)


#: `proxy config --type`: an xDS type, or every one.
PROXY_CONFIG_TYPES = ("all", "listeners", "clusters", "routes", "endpoints", "secrets")


def _add_mesh_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        metavar="DIR",
        help="directory of manifests, or `kubernetes` (the default with --kubeconfig or --context)",
    )
    _add_kubernetes_access(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the Kubernetes API to list everything",
    )
    parser.add_argument(
        "--trust-domain", help="the CA's trust domain, checked against MeshConfig (default: not checked)"
    )


def _add_kubernetes_access(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        help="Kubernetes access outside a pod (default: in-cluster, $KUBECONFIG, ~/.kube/config)",
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def _add_install(commands: Any) -> None:
    """`install`, `uninstall` and `check`: the Helm chart's render (deploy/helm/meshcp) on a
    cluster, with server-side apply; meshcp needs no helm."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="a chart value (repeatable): meshName, trustDomain, permissive, egress, certValidity, "
            "image.repository, image.tag, controller.replicas, injector.replicas",
        )
        parser.add_argument(
            "-n",
            "--namespace",
            default="meshcp-system",
            help="the namespace meshcp runs in, as helm's release namespace (default: meshcp-system)",
        )
        _add_kubernetes_access(parser)
        parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each API call and wait")

    install = command(commands, "install", "install meshcp into the cluster (server-side apply)")
    common(install)
    install.add_argument(
        "--dry-run", action="store_true", help="print the manifests instead of applying them"
    )
    output_option(install, ("yaml", "json"), "yaml")
    uninstall = command(commands, "uninstall", "remove what install created (CRDs and namespace kept)")
    common(uninstall)
    uninstall.add_argument(
        "--delete-cluster-wide-resources",
        action="store_true",
        help="also the CRDs, which deletes every MeshConfig, SMI and OSM policy object in the cluster",
    )
    uninstall.add_argument(
        "--delete-namespace",
        action="store_true",
        help="also the namespace, and with it the mesh's CA root (pods must then be recreated)",
    )
    check = command(commands, "check", "is meshcp installed and working? one line per check")
    common(check)
    check.add_argument("--pre", action="store_true", help="could meshcp be installed here?")
    check.add_argument(
        "--proxies",
        type=int,
        default=5,
        metavar="N",
        help="name at most N proxy types not in sync (default 5)",
    )
    output_option(check)


def _add_kpi(commands: Any) -> None:
    """`stat` and `edges`: golden metrics from Prometheus (kinds are checked by the command,
    so that a bad one is a one-line usage error like a bad window)."""
    stat = command(commands, "stat", "success rate, RPS, latency and connections from Prometheus")
    stat.add_argument("kind", metavar="KIND", help="deploy, pod, svc, ns or trafficsplit")
    stat.add_argument("name", metavar="NAME", nargs="?", help="one resource (all when omitted)")
    stat.add_argument(
        "--from", dest="source_res", metavar="RES", help="only requests from RES (pod|deploy|ns[/NAME])"
    )
    stat.add_argument("--to", metavar="RES", help="only requests to RES (svc|ns[/NAME])")
    stat.add_argument("--from-namespace", metavar="NS", help="the namespace of --from (default: -n)")
    stat.add_argument("--to-namespace", metavar="NS", help="the namespace of --to (default: -n)")
    stat.add_argument("--window", default="1m", help="rate window, a Prometheus duration")
    stat.add_argument("--source", type=Path, metavar="DIR", help="manifests: TrafficSplit weights and leaves")
    edges = command(commands, "edges", "who talks to whom, and with which identities")
    edges.add_argument("kind", metavar="KIND", help="deploy, pod or ns")
    edges.add_argument("--window", default="1m", help="connections opened in this window or open")
    edges.add_argument("--source", type=Path, metavar="DIR", help="manifests: the servers' identities")
    for parser in (stat, edges):
        parser.add_argument("-n", "--namespace", default="", help="namespace (default: all)")
        output_option(parser)
        parser.add_argument(
            "--prometheus-url", metavar="URL", help="Prometheus (default: the lab's, in its node namespace)"
        )


def _add_lab(commands: Any) -> None:
    lab_parser = command(commands, "lab", "the mesh on this machine: pods as network namespaces (root)")
    actions = lab_parser.add_subparsers(
        dest="lab_command", required=True, metavar="ACTION", parser_class=Parser
    )
    up = command(actions, "up", "start a lab from a directory of manifests")
    up.add_argument("directory", type=Path)
    apply = command(actions, "apply", "apply changed manifests to the running lab")
    apply.add_argument("directory", type=Path)
    status = command(actions, "status", "pods, addresses, sidecars and their last xDS ACK")
    output_option(status, ("table", "json"))
    exec_ = command(actions, "exec", "run a command in a pod's network namespace")
    exec_.add_argument("pod", metavar="POD", help="NAME with -n, or NAMESPACE/NAME")
    exec_.add_argument("-n", "--namespace", help="the pod's namespace")
    exec_.add_argument("-c", "--container", help="whose user and environment (default: the first app)")
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    logs = command(actions, "logs", "a container's output (or `controller`, `supervisor`, `prometheus`)")
    logs.add_argument(
        "pod", metavar="POD|controller|supervisor|prometheus", help="NAME with -n, or NAMESPACE/NAME"
    )
    logs.add_argument("-n", "--namespace", help="the pod's namespace")
    logs.add_argument("-c", "--container", help="container name (default: the first app)")
    command(actions, "down", "stop the lab and remove all it made (also after a crash)")
    supervise = actions.add_parser("_supervise")
    supervise.add_argument("directory", type=Path)
    supervise.add_argument("--envoy", type=Path, required=True)


def _add_ca_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("certificates")
    group.add_argument("--state-dir", type=Path, default=default_state_dir(), help="internal CA state")
    group.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain")
    group.add_argument("--ca-provider", choices=PROVIDERS, default="internal", help="who signs")
    group.add_argument(
        "--ca-key-type", type=key_spec, default="ecdsa-p256", help="ecdsa-p256 or rsa-2048/3072/4096"
    )
    group.add_argument("--cert-validity", type=duration, default="24h", help="workload certificates")
    group.add_argument("--renew-share", type=float, default=0.3, help="renew below this share of validity")
    group.add_argument("--cfssl-url", default="", help="cfssl server, e.g. http://127.0.0.1:8888")
    group.add_argument("--vault-address", default="", help="Vault server, e.g. https://vault:8200")
    group.add_argument(
        "--vault-token", default=os.environ.get("VAULT_TOKEN", ""), help="Vault token (default $VAULT_TOKEN)"
    )
    group.add_argument("--vault-role", default="meshcp", help="Vault PKI role")
    group.add_argument("--vault-mount", default="pki", help="Vault PKI mount")
    group.add_argument(
        "--ca-secret", default="", metavar="NS/NAME", help="keep the internal CA in this Secret"
    )
    group.add_argument("--cert-manager-issuer", default="", help="cert-manager issuer name")
    group.add_argument("--cert-manager-issuer-kind", default="Issuer", help="Issuer or ClusterIssuer")
    group.add_argument(
        "--cert-manager-namespace", default="meshcp-system", help="where CertificateRequests go"
    )
    group.add_argument(
        "--kubeconfig",
        help="Kubernetes access outside a pod (default: in-cluster, $KUBECONFIG, ~/.kube/config)",
    )
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
