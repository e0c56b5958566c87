"""The `meshcp` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from meshcp import __version__
from meshcp.certs.cli_support import ca_rotate, ca_show
from meshcp.certs.keys import KeySpec
from meshcp.certs.provider import CertificateError
from meshcp.certs.setup import PROVIDERS, CaSettings, close_provider, default_state_dir, open_provider
from meshcp.cli import offline
from meshcp.cli.offline import OfflineError
from meshcp.injector.server import InjectorError, InjectorSettings, run_injector
from meshcp.kube.client import default_api_client
from meshcp.lab import commands as lab
from meshcp.lab.demo import run_demo
from meshcp.lab.layout import LabPaths
from meshcp.lab.network import LabError
from meshcp.runtime.controller import ControllerRuntime, ListenError
from meshcp.runtime.settings import Address, Settings
from meshcp.sources.files import SourceError
from meshcp.xds.tls import server_context

log = logging.getLogger("meshcp")

_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class UsageError(Exception):
    """Bad command-line input: printed as `meshcp: error: ...`, exit status 2."""


def duration(text: str) -> timedelta:
    """`30s`, `10m`, `24h` or `7d`."""
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 10m, 24h or 7d")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def key_spec(text: str) -> KeySpec:
    try:
        return KeySpec.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshcp", description="A service mesh control plane for Envoy.")
    parser.add_argument("--version", action="version", version=f"meshcp {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the controller (ADS server, CA, HTTP endpoint)")
    serve.add_argument(
        "--xds-address", default="127.0.0.1:15128", help="gRPC ADS listener (default %(default)s)"
    )
    serve.add_argument("--http-address", default="127.0.0.1:9091", help="HTTP listener (default %(default)s)")
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
    serve.add_argument("--admission", type=int, default=256, help="new streams configured at once")
    serve.add_argument(
        "--source", help="directory of manifests to serve (watched), or `kubernetes` to watch the cluster"
    )
    _add_ca_options(serve)

    compile_ = commands.add_parser("compile", help="print the Envoy config one pod's proxy would receive")
    compile_.add_argument("--source", type=Path, required=True, help="directory of manifests")
    compile_.add_argument("--pod", type=_pod, required=True, metavar="NS/NAME")
    compile_.add_argument("--output", choices=["json", "yaml"], default="json")

    boot = commands.add_parser("bootstrap", help="write one pod's Envoy bootstrap and xDS client certificate")
    boot.add_argument("--source", type=Path, required=True, help="directory of manifests")
    boot.add_argument("--pod", type=_pod, required=True, metavar="NS/NAME")
    boot.add_argument(
        "--xds-address", default="127.0.0.1:15128", help="where the proxy reaches the controller"
    )
    boot.add_argument("--xds-server-name", default="localhost", help="name in the controller's certificate")
    boot.add_argument("--out", type=Path, required=True, help="directory to write into")
    boot.add_argument("--delta", action="store_true", help="use incremental (delta) ADS")
    boot.add_argument(
        "--insecure-xds", action="store_true", help="plaintext xDS (controller runs --insecure-xds)"
    )
    _add_ca_options(boot)

    inject = commands.add_parser("inject", help="run the sidecar injector (HTTPS mutating webhook)")
    inject.add_argument(
        "--tls-cert", type=Path, required=True, help="PEM chain the webhook serves (reloaded)"
    )
    inject.add_argument("--tls-key", type=Path, required=True, help="PEM key for --tls-cert (reloaded)")
    inject.add_argument("--address", default="0.0.0.0:9090", help="listener (default %(default)s)")
    inject.add_argument(
        "--xds-address",
        default="meshcp-controller.meshcp-system.svc:15128",
        help="controller, as sidecars dial it",
    )
    inject.add_argument("--xds-server-name", default="", help="name on the controller's certificate")
    inject.add_argument("--xds-trust-bundle", type=Path, help="PEM bundle sidecars trust for the controller")
    inject.add_argument("--init-image", default=None, help="image of the iptables init container")
    inject.add_argument("--mesh-config", default="meshcp", help="name of the MeshConfig object")
    inject.add_argument("--delta-xds", action="store_true", help="sidecars use incremental (delta) ADS")
    _add_ca_options(inject)

    ca = commands.add_parser("ca", help="inspect or rotate the internal CA")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    for name, text in (
        ("show", "print the root certificate (never the key)"),
        ("rotate", "start a root rotation"),
    ):
        action = ca_commands.add_parser(name, help=text)
        action.add_argument("--state-dir", type=Path, default=default_state_dir(), help="CA state directory")
        action.add_argument("--output", choices=["text", "json"], default="text")
    _add_lab(commands)
    demo = commands.add_parser("demo", help="run the bookstore mesh in a lab, drive traffic, print a report")
    demo.add_argument(
        "--source", type=Path, default=Path("examples/bookstore"), help="manifests (%(default)s)"
    )
    demo.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (%(default)s)")
    return parser


def _add_lab(commands: Any) -> None:
    lab_parser = commands.add_parser(
        "lab", help="the mesh on this machine: pods as network namespaces (root)"
    )
    actions = lab_parser.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start a lab from a directory of manifests")
    up.add_argument("directory", type=Path)
    apply = actions.add_parser("apply", help="apply changed manifests to the running lab")
    apply.add_argument("directory", type=Path)
    status = actions.add_parser("status", help="pods, addresses, sidecars and their last xDS ACK")
    status.add_argument("--output", choices=["text", "json"], default="text")
    exec_ = actions.add_parser("exec", help="run a command in a pod's network namespace")
    exec_.add_argument("pod", metavar="NAMESPACE/POD")
    exec_.add_argument("-c", "--container", help="whose user and environment (default: the first app)")
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    logs = actions.add_parser("logs", help="a container's output (or `controller`, `supervisor`)")
    logs.add_argument("pod", metavar="NAMESPACE/POD")
    logs.add_argument("-c", "--container", help="container name (default: the first app)")
    actions.add_parser("down", help="stop the lab and remove all it made (also after a crash)")
    supervise = actions.add_parser("_supervise")
    supervise.add_argument("directory", type=Path)
    supervise.add_argument("--envoy", type=Path, required=True)


def _pod(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def _add_ca_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("certificates")
    group.add_argument(
        "--state-dir", type=Path, default=default_state_dir(), help="internal CA state (%(default)s)"
    )
    group.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain (%(default)s)")
    group.add_argument("--ca-provider", choices=PROVIDERS, default="internal", help="who signs (%(default)s)")
    group.add_argument(
        "--ca-key-type", type=key_spec, default=KeySpec.ECDSA_P256, help="ecdsa-p256 or rsa-2048/3072/4096"
    )
    group.add_argument(
        "--cert-validity", type=duration, default=timedelta(hours=24), help="workload certificates (24h)"
    )
    group.add_argument(
        "--renew-share", type=float, default=0.3, help="renew below this share of validity (0.3)"
    )
    group.add_argument("--cfssl-url", default="", help="cfssl server, e.g. http://127.0.0.1:8888")
    group.add_argument("--vault-address", default="", help="Vault server, e.g. https://vault:8200")
    group.add_argument(
        "--vault-token", default=os.environ.get("VAULT_TOKEN", ""), help="Vault token ($VAULT_TOKEN)"
    )
    group.add_argument("--vault-role", default="meshcp", help="Vault PKI role (%(default)s)")
    group.add_argument("--vault-mount", default="pki", help="Vault PKI mount (%(default)s)")
    group.add_argument(
        "--ca-secret", default="", metavar="NS/NAME", help="keep the internal CA in this Secret"
    )
    group.add_argument("--cert-manager-issuer", default="", help="cert-manager issuer name")
    group.add_argument("--cert-manager-issuer-kind", default="Issuer", help="Issuer or ClusterIssuer")
    group.add_argument(
        "--cert-manager-namespace", default="meshcp-system", help="where CertificateRequests go"
    )
    group.add_argument(
        "--kubeconfig", help="Kubernetes access outside a pod (default: in-cluster, ~/.kube/config)"
    )
    group.add_argument("--context", help="kubeconfig context (default: the current one)")


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    files = (args.xds_cert, args.xds_key, args.xds_client_ca)
    if args.insecure_xds and any(files):
        raise UsageError("--insecure-xds cannot be combined with --xds-cert/--xds-key/--xds-client-ca")
    if not any(files):
        return None
    if not all(files):
        raise UsageError("--xds-cert, --xds-key and --xds-client-ca go together")
    try:
        return server_context(args.xds_cert, args.xds_key, args.xds_client_ca)
    except (OSError, ssl.SSLError) as error:
        raise UsageError(f"cannot load the xDS TLS files: {error}") from None


def _settings(args: argparse.Namespace) -> Settings:
    try:
        xds, http = Address.parse(args.xds_address), Address.parse(args.http_address)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.admission < 1:
        raise UsageError("--admission must be at least 1")
    return Settings(
        xds_address=xds,
        http_address=http,
        insecure_xds=args.insecure_xds,
        xds_tls=_tls(args),
        xds_names=tuple(args.xds_names or ("localhost", "127.0.0.1")),
        admission=args.admission,
        ca=_ca_settings(args),
        source=None if args.source in (None, "kubernetes") else Path(args.source),
        kubernetes=args.source == "kubernetes",
        kubeconfig=args.kubeconfig,
        kube_context=args.context,
    )


def _ca_settings(args: argparse.Namespace) -> CaSettings:
    if not 0 < args.renew_share < 1:
        raise UsageError("--renew-share must be between 0 and 1")
    if args.ca_provider == "cfssl" and not args.cfssl_url:
        raise UsageError("--cfssl-url is required with --ca-provider cfssl")
    if args.ca_provider == "vault" and not (args.vault_address and args.vault_token):
        raise UsageError("--vault-address and a token (--vault-token or VAULT_TOKEN) are required with vault")
    if args.ca_provider == "cert-manager" and not args.cert_manager_issuer:
        raise UsageError("--cert-manager-issuer is required with --ca-provider cert-manager")
    if args.ca_secret and args.ca_secret.count("/") != 1:
        raise UsageError(f"--ca-secret {args.ca_secret!r} is not NAMESPACE/NAME")
    return CaSettings(
        provider=args.ca_provider,
        state_dir=args.state_dir,
        key_spec=args.ca_key_type,
        trust_domain=args.trust_domain,
        validity=args.cert_validity,
        renew_share=args.renew_share,
        cfssl_url=args.cfssl_url,
        vault_address=args.vault_address,
        vault_token=args.vault_token,
        vault_role=args.vault_role,
        vault_mount=args.vault_mount,
        secret=args.ca_secret,
        cert_manager_issuer=args.cert_manager_issuer,
        cert_manager_issuer_kind=args.cert_manager_issuer_kind,
        cert_manager_namespace=args.cert_manager_namespace,
    )


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runtime = await ControllerRuntime.open(settings)
    await runtime.run(stop)


async def _compile(args: argparse.Namespace) -> None:
    namespace, name = args.pod
    state = await offline.load(args.source)
    provider = await open_provider(CaSettings())
    compiled = await offline.compile_pod(state, namespace, name, provider)
    document = {"pod": f"{namespace}/{name}", "class": compiled.class_key, "identity": str(compiled.identity)}
    document.update(compiled.config)
    if args.output == "yaml":
        print(yaml.safe_dump(document, sort_keys=False), end="")
    else:
        print(json.dumps(document, indent=2))


async def _bootstrap(args: argparse.Namespace) -> None:
    namespace, name = args.pod
    try:
        xds = Address.parse(args.xds_address)
    except ValueError as error:
        raise UsageError(str(error)) from None
    ca = _ca_settings(args)
    state = await offline.load(args.source)
    provider = await open_provider(ca, partial(default_api_client, args.context, args.kubeconfig))
    try:
        proxy = await offline.write_bootstrap(
            state,
            namespace,
            name,
            provider=provider,
            xds_host=xds.host,
            xds_port=xds.port,
            out=args.out,
            trust_domain=ca.trust_domain,
            server_name=args.xds_server_name,
            delta=args.delta,
            insecure=args.insecure_xds,
        )
    finally:
        await close_provider(provider)
    print(f"wrote {args.out}/bootstrap.json for node {proxy.name}")


async def _inject(args: argparse.Namespace) -> None:
    try:
        listen, xds = Address.parse(args.address), Address.parse(args.xds_address)
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings = InjectorSettings(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        host=listen.host,
        port=listen.port,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        xds_host=xds.host,
        xds_port=xds.port,
        xds_server_name=args.xds_server_name,
        xds_trust_bundle=args.xds_trust_bundle,
        delta_xds=args.delta_xds,
        mesh_config_name=args.mesh_config,
        ca=_ca_settings(args),
    )
    if args.init_image:
        settings.init_image = args.init_image
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_injector(settings, stop)


def _print_ca(report: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(report, indent=2))
        return
    print(f"phase: {report['phase']}")
    for label, key in (("root", "root"), ("previous root", "previous_root")):
        root = report.get(key)
        if root:
            print(f"{label}:")
            for field, value in root.items():
                print(f"  {field}: {value}")


def _lab(args: argparse.Namespace) -> int:
    paths = LabPaths.default()
    action = args.lab_command
    if action == "up":
        lab.up(args.directory, paths)
    elif action == "apply":
        lab.apply(args.directory, paths)
    elif action == "status":
        lab.status(paths, args.output)
    elif action == "exec":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        lab.exec_in(args.pod, command, paths, args.container)
    elif action == "logs":
        lab.logs(args.pod, paths, args.container)
    elif action == "down":
        lab.down(paths)
    elif action == "_supervise":
        return lab.run_supervisor(args.directory, args.envoy, paths)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            asyncio.run(_serve(_settings(args)))
        elif args.command == "inject":
            asyncio.run(_inject(args))
        elif args.command == "compile":
            asyncio.run(_compile(args))
        elif args.command == "bootstrap":
            asyncio.run(_bootstrap(args))
        elif args.command == "lab":
            return _lab(args)
        elif args.command == "demo":
            return run_demo(args.source, LabPaths.default(), duration=args.duration)
        elif args.command == "ca":
            action = ca_show if args.ca_command == "show" else ca_rotate
            _print_ca(asyncio.run(action(args.state_dir)), args.output)
    except UsageError as error:
        parser.exit(2, f"meshcp: error: {error}\n")
    except (ListenError, CertificateError, OfflineError, SourceError, InjectorError, LabError) as error:
        parser.exit(1, f"meshcp: error: {error}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
