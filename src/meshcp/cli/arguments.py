"""The conventions every `meshcp` command shares, as argparse pieces: one-line usage
errors (exit status 2), every default in `--help`, `--log-level` anywhere on the line,
`-o/--output`, pods as `POD -n NS` or `NS/POD`, and `--server` for the controller's debug
listener. `cli.parser` builds the commands from them."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from meshcp.cli.output import ALIASES, FORMATS
from meshcp.sidecar.ports import CONTROLLER_DEBUG_PORT


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help line, unless the help already says it or there is
    none to say (a flag, an unset option)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or "(default" in text or text == argparse.SUPPRESS:
            return text
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS
        if unset or default in ("", []) or not action.option_strings:
            return text
        return f"{text} (default %(default)s)" if text else "(default %(default)s)"


class Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr, exit status 2 (as every other error is one line)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"meshcp: error: {message} (see `{self.prog} --help`)\n")


LOG_LEVELS = ("debug", "info", "warning", "error")


def _common() -> Parser:
    """Options every command takes, anywhere on its line (`--log-level`)."""
    common = Parser(add_help=False)
    common.add_argument(
        "--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="log verbosity (default info)"
    )
    return common


def command(group: Any, name: str, text: str, **kwargs: Any) -> Parser:
    """A (sub)command with the common options."""
    parser: Parser = group.add_parser(name, help=text, description=text, parents=[_common()], **kwargs)
    return parser


def output_option(
    parser: argparse.ArgumentParser, choices: tuple[str, ...] = FORMATS, default: str = "table"
) -> None:
    """`-o/--output`, the same on every command (older spellings accepted, see `output.ALIASES`)."""

    parser.add_argument(
        "-o",
        "--output",
        type=lambda text: ALIASES.get(text, text),
        choices=choices,
        default=default,
        help="output format",
    )


def pod_argument(parser: argparse.ArgumentParser, text: str = "the pod") -> None:
    """`POD -n NS` (or `NS/POD`), as kubectl and osm name pods; `--pod NS/NAME` still works."""
    parser.add_argument("pod", nargs="?", metavar="POD", help=f"{text}: NAME (with -n) or NAMESPACE/NAME")
    parser.add_argument("-n", "--namespace", default="default", help="the pod's namespace")
    parser.add_argument("--pod", dest="pod_option", type=_pod, help=argparse.SUPPRESS)


def server_option(parser: argparse.ArgumentParser) -> None:
    """Where a running controller answers: its debug listener (`serve --debug-address`)."""
    parser.add_argument(
        "--server",
        "--debug-address",
        dest="server",
        metavar="HOST:PORT",
        default=f"127.0.0.1:{CONTROLLER_DEBUG_PORT}",
        help="the controller's debug listener (serve --debug-address)",
    )


def _pod(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name
