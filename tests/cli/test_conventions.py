"""One set of conventions across `meshcp`: -o, -n, POD -n NS, --log-level anywhere, defaults
in --help, one-line errors with exit 1 (failed) or 2 (usage), `version`, `completion`."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from meshcp import __version__
from meshcp.cli.arguments import HelpFormatter
from meshcp.cli.commands import exec_command, lab_pod
from meshcp.cli.completion import _walk
from meshcp.cli.parser import build_parser
from tests.cli.runner import EXAMPLE, meshcp


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "pod",
    [
        ["bookstore-v1-0", "-n", "bookstore"],
        ["-n", "bookstore", "bookstore-v1-0"],
        ["bookstore/bookstore-v1-0"],
        ["--pod", "bookstore/bookstore-v1-0"],
    ],
)
def test_a_pod_is_pod_dash_n_or_ns_slash_pod(capsys: pytest.CaptureFixture[str], pod: list[str]) -> None:
    ran = meshcp(capsys, "compile", *pod, "--source", str(EXAMPLE))
    assert ran.status == 0, ran.err
    assert json.loads(ran.out)["pod"] == "bookstore/bookstore-v1-0"


def test_compile_speaks_yaml_with_dash_o(capsys: pytest.CaptureFixture[str]) -> None:
    ran = meshcp(capsys, "compile", "bookstore/bookstore-v1-0", "--source", str(EXAMPLE), "-o", "yaml")
    assert ran.status == 0, ran.err
    assert yaml.safe_load(ran.out)["identity"] == "bookstore/bookstore"


@pytest.mark.parametrize(
    ("args", "level"),
    [
        (["--log-level", "error", "version"], "error"),
        (["version", "--log-level", "debug"], "debug"),
        (["ca", "show", "--log-level", "warning"], "warning"),
        (["proxy", "status", "--log-level", "debug", "-o", "json"], "debug"),
        (["lab", "status", "--log-level", "debug"], "debug"),
        (["version"], "info"),
    ],
)
def test_log_level_is_taken_anywhere_on_the_line(args: list[str], level: str) -> None:
    assert build_parser().parse_args(args).log_level == level


def test_log_level_after_the_command_takes_effect() -> None:
    for level, shown in (("debug", True), ("info", False)):
        ran = subprocess.run(
            [sys.executable, "-m", "meshcp", "version", "--server", "127.0.0.1:9", "--log-level", level],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert (" DEBUG " in ran.stderr) is shown, ran.stderr  # asyncio names its selector at debug


def _helps() -> list[tuple[str, argparse.Action, str]]:
    out = []
    for path, parser in _walk(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                out.append((path, action, parser.format_help()))
    return out


def test_every_default_is_shown_in_help() -> None:
    formatter = HelpFormatter("meshcp")
    for path, action, _ in _helps():
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default in ("", []):
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        assert "default" in (formatter._get_help_string(action) or ""), (
            f"meshcp{path} {action.option_strings}"
        )


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["inject"], "openservicemesh/init"),
        (
            ["inject"],
            "--mesh-config MESH_CONFIG name of the MeshConfig object (default meshcp)",
        ),
        (["bootstrap"], "(default localhost)"),
        (["compile"], "(default json)"),
        (["analyze"], "(default table)"),
        (["serve"], "workload certificates (default 24h)"),
    ],
)
def test_defaults_once_missing_are_in_help(command: list[str], shown: str) -> None:
    parser = build_parser()
    for _, sub in _walk(parser):
        if sub.prog == "meshcp " + " ".join(command):
            assert shown in " ".join(sub.format_help().split())  # as read, whatever the wrapping
            return
    raise AssertionError(f"no command {command}")


def test_hidden_options_stay_out_of_help() -> None:
    for path, parser in _walk(build_parser()):
        assert "--pod " not in parser.format_help(), path


@pytest.mark.parametrize(
    "args",
    [
        ["compile", "bookstore/bookstore-v1-0", "--source", str(EXAMPLE), "-o", "xml"],
        ["nosuch"],
        ["analyze", "--strict", "--bogus"],
        ["compile", "--source", str(EXAMPLE)],
        ["compile", "a/b/c", "--source", str(EXAMPLE)],
        ["analyze"],
        ["proxy", "config", "-o", "json"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    ran = meshcp(capsys, *args)
    assert ran.status == 2, ran
    assert ran.err.startswith("meshcp: error: "), ran.err
    assert len(ran.err.strip().splitlines()) == 1, ran.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["compile", "nopod", "-n", "bookstore", "--source", str(EXAMPLE)],
            "there is no pod bookstore/nopod",
        ),
        (["compile", "x/y", "--source", "/nonexistent"], "/nonexistent"),
        (["analyze", "--source", "/nonexistent"], "/nonexistent"),
        (["proxy", "status", "--server", "127.0.0.1:{port}"], "no controller answers at 127.0.0.1:"),
    ],
)
def test_runtime_errors_are_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    ran = meshcp(capsys, *(arg.format(port=closed_port()) for arg in args))
    assert ran.status == 1, ran
    assert ran.err.startswith("meshcp: error: "), ran.err
    assert message in ran.err
    assert len(ran.err.strip().splitlines()) == 1, ran.err


def test_version_without_a_controller(capsys: pytest.CaptureFixture[str]) -> None:
    server = f"127.0.0.1:{closed_port()}"
    ran = meshcp(capsys, "version", "--server", server)
    assert (ran.status, ran.out) == (0, f"client: {__version__}\nserver: not reachable at {server}\n")
    ran = meshcp(capsys, "version", "--server", server, "-o", "json")
    assert json.loads(ran.out) == {"client": {"version": __version__}, "server": None}


def test_old_output_spellings_are_still_accepted() -> None:
    assert build_parser().parse_args(["ca", "show", "--output", "text"]).output == "table"
    assert build_parser().parse_args(["lab", "status", "--output", "text"]).output == "table"


BASH = shutil.which("bash")


def complete(script: str, *words: str) -> list[str]:
    """What bash completes after `meshcp WORDS...` (the last word being typed)."""
    assert BASH is not None
    line = " ".join(f"'{word}'" for word in ("meshcp", *words))
    program = (
        f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; _meshcp; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    done = subprocess.run(
        [BASH, "--norc", "-c", program], capture_output=True, text=True, check=True, timeout=30
    )
    return sorted(filter(None, done.stdout.splitlines()))


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_bash_completion_knows_commands_options_and_values(tmp_path: object) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "meshcp", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    script = made.stdout
    assert complete(script, "pro") == ["proxy"]
    assert complete(script, "proxy", "") == ["config", "status"]
    assert complete(script, "proxy", "config", "--type", "") == [
        "all",
        "clusters",
        "endpoints",
        "listeners",
        "routes",
        "secrets",
    ]
    assert complete(script, "analyze", "-o", "") == ["json", "table", "yaml"]
    assert "--strict" in complete(script, "analyze", "--s")
    assert "--log-level" in complete(script, "ca", "show", "--l")
    assert "_supervise" not in complete(script, "lab", "")


@pytest.mark.parametrize(
    ("argv", "pod", "command", "container"),
    [
        (["lab", "exec", "p", "-n", "ns", "--", "ls", "-l"], "ns/p", ["ls", "-l"], None),
        (["lab", "exec", "-n", "ns", "p", "-c", "app", "--", "ls"], "ns/p", ["ls"], "app"),
        (["lab", "exec", "ns/p", "--", "ls", "-n"], "ns/p", ["ls", "-n"], None),
        (["lab", "exec", "ns/p", "ls"], "ns/p", ["ls"], None),
        (["lab", "logs", "controller"], "controller", None, None),
        (["lab", "logs", "p", "-n", "ns", "-c", "app"], "ns/p", None, "app"),
    ],
)
def testlab_pods_are_pod_dash_n_too(
    argv: list[str], pod: str, command: list[str] | None, container: str | None
) -> None:
    args = build_parser().parse_args(argv)
    if command is not None:
        assert exec_command(args) == command
    assert (lab_pod(args), args.container) == (pod, container)
