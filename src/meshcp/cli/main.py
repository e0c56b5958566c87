"""The `meshcp` command: parse, run the command, turn known failures into one-line errors."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from meshcp.certs.cli_support import ca_rotate, ca_show
from meshcp.certs.provider import CertificateError
from meshcp.cli import commands, stat
from meshcp.cli.offline import OfflineError
from meshcp.cli.options import UsageError, controller_settings
from meshcp.cli.parser import build_parser
from meshcp.injector.server import InjectorError
from meshcp.kpi.prometheus import PrometheusError
from meshcp.lab.demo import run_demo
from meshcp.lab.layout import LabPaths
from meshcp.lab.network import LabError
from meshcp.runtime.controller import ListenError, PartFailed
from meshcp.sources.files import SourceError


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
            asyncio.run(commands.serve(controller_settings(args)))
        elif args.command == "inject":
            asyncio.run(commands.inject(args))
        elif args.command == "compile":
            asyncio.run(commands.compile_pod(args))
        elif args.command == "bootstrap":
            asyncio.run(commands.bootstrap(args))
        elif args.command == "stat":
            asyncio.run(stat.stat(args))
        elif args.command == "edges":
            asyncio.run(stat.edges(args))
        elif args.command == "lab":
            return commands.lab_command(args)
        elif args.command == "demo":
            return run_demo(args.source, LabPaths.default(), duration=args.duration)
        elif args.command == "ca":
            action = ca_show if args.ca_command == "show" else ca_rotate
            commands.print_ca(asyncio.run(action(args.state_dir)), args.output)
    except UsageError as error:
        parser.exit(2, f"meshcp: error: {error}\n")
    except PrometheusError as error:
        parser.exit(1, f"meshcp: {error}\n")
    except (
        ListenError,
        PartFailed,
        CertificateError,
        OfflineError,
        SourceError,
        InjectorError,
        LabError,
    ) as error:
        parser.exit(1, f"meshcp: error: {error}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
