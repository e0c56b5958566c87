"""The `meshcp` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from meshcp import __version__
from meshcp.controller import Address, ControllerRuntime, ListenError, Settings
from meshcp.xds.tls import server_context

log = logging.getLogger("meshcp")


class UsageError(Exception):
    """Bad command-line input: printed as `meshcp: error: ...`, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshcp", description="A service mesh control plane for Envoy.")
    parser.add_argument("--version", action="version", version=f"meshcp {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the controller (ADS server, HTTP endpoint)")
    serve.add_argument(
        "--xds-address", default="127.0.0.1:15128", help="gRPC ADS listener (default %(default)s)"
    )
    serve.add_argument("--http-address", default="127.0.0.1:9091", help="HTTP listener (default %(default)s)")
    serve.add_argument("--insecure-xds", action="store_true", help="serve xDS in plaintext (local work only)")
    serve.add_argument("--xds-cert", type=Path, help="PEM certificate chain of the xDS server")
    serve.add_argument("--xds-key", type=Path, help="PEM private key of the xDS server")
    serve.add_argument(
        "--xds-client-ca", type=Path, help="PEM CA bundle that signs proxies' client certificates"
    )
    serve.add_argument("--admission", type=int, default=256, help="new streams configured at once")
    return parser


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.insecure_xds:
        if args.xds_cert or args.xds_key or args.xds_client_ca:
            raise UsageError("--insecure-xds cannot be combined with --xds-cert/--xds-key/--xds-client-ca")
        return None
    if not (args.xds_cert and args.xds_key and args.xds_client_ca):
        raise UsageError(
            "xDS needs mutual TLS: give --xds-cert, --xds-key and --xds-client-ca, or --insecure-xds"
        )
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
    return Settings(xds_address=xds, http_address=http, xds_tls=_tls(args), admission=args.admission)


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await ControllerRuntime(settings).run(stop)


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
    except UsageError as error:
        parser.exit(2, f"meshcp: error: {error}\n")
    except ListenError as error:
        parser.exit(1, f"meshcp: error: {error}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
