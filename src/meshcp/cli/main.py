"""The `meshcp` command: parse, run the command, turn every failure into one line on stderr.

Exit status: 0 done, 1 the command failed (or found errors: `analyze`, `compile`), 2 bad
usage, 130 interrupted. A failure nobody foresaw is still one line (its traceback is
logged at `--log-level debug`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from meshcp.certs.provider import CertificateError
from meshcp.certs.root_rotation import RotationConflict
from meshcp.cli import analyze, commands, completion, install, operate, stat
from meshcp.cli.offline import OfflineError
from meshcp.cli.options import UsageError, controller_settings
from meshcp.cli.parser import build_parser
from meshcp.http.debug_client import ControllerError
from meshcp.injector.errors import InjectorError
from meshcp.install.apply import InstallError
from meshcp.kpi.prometheus import PrometheusError
from meshcp.lab.demo import run_demo
from meshcp.lab.layout import LabPaths
from meshcp.lab.network import LabError
from meshcp.runtime.controller import ListenError, PartFailed
from meshcp.sources.files import SourceError

log = logging.getLogger("meshcp.cli")

#: Failures a command reports as they are: the message says what to fix.
KNOWN_FAILURES = (
    ListenError,
    PartFailed,
    CertificateError,
    OfflineError,
    SourceError,
    InjectorError,
    LabError,
    PrometheusError,
    ControllerError,
    RotationConflict,
    InstallError,
)


def _async(
    work: Callable[[argparse.Namespace], Coroutine[Any, Any, int | None]],
) -> Callable[[argparse.Namespace], int]:
    """A command that runs on an event loop; it returns its exit status (None: 0)."""

    def run(args: argparse.Namespace) -> int:
        return asyncio.run(work(args)) or 0

    return run


def _serve(args: argparse.Namespace) -> int:
    asyncio.run(commands.serve(controller_settings(args)))
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve,
    "inject": _async(commands.inject),
    "compile": _async(commands.compile_pod),
    "bootstrap": _async(commands.bootstrap),
    "stat": _async(stat.stat),
    "edges": _async(stat.edges),
    "lab": commands.lab_command,
    "demo": lambda args: run_demo(args.source, LabPaths.default(), duration=args.duration),
    "analyze": _async(analyze.analyze),
    "proxy": _async(operate.proxy),
    "policy": _async(analyze.policy),
    "ca": _async(operate.ca),
    "version": _async(operate.version),
    "install": _async(install.install_command),
    "uninstall": _async(install.uninstall_command),
    "check": _async(install.check_command),
    "completion": completion.command,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return HANDLERS[args.command](args)
    except UsageError as error:
        parser.exit(2, f"meshcp: error: {error}\n")
    except KNOWN_FAILURES as error:
        parser.exit(1, f"meshcp: error: {error}\n")
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        log.debug("unexpected failure", exc_info=True)
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        parser.exit(1, f"meshcp: error: {type(error).__name__}: {detail} (--log-level debug shows where)\n")


if __name__ == "__main__":
    raise SystemExit(main())
