"""Every example of docs/cli.md, run: the command prints what the page shows.

An example is a `console` block: `$ meshcp ARGS...` (a trailing `# exit status N` says
the status it ends with, else 0), then its output. In the output `…` stands for any text,
and a line holding only `…` for any number of lines. Examples that ask a controller
(`proxy`, `version`, `ca show`) run against a real `meshcp serve` of examples/bookstore with
one Envoy; `ca rotate` and `ca finish-rotation` against a CA of their own, no controller.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcp.certs import DirectoryStore, InternalCA
from tests.cli.controller import run, running_mesh, wait_synced
from tests.support.envoy import REAL_ENVOY

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "cli.md"
_BLOCK = re.compile(r"```console\n(.*?)```", re.DOTALL)
_STATUS = re.compile(r"\s+# exit status (\d+)$")


@dataclass(frozen=True)
class Example:
    args: tuple[str, ...]
    status: int
    output: str

    def __str__(self) -> str:
        return "meshcp " + " ".join(self.args)

    @property
    def controller(self) -> bool:
        return self.args[0] in ("proxy", "version") or self.args[:2] == ("ca", "show")

    @property
    def offline_ca(self) -> bool:
        return self.args[0] == "ca" and not self.controller


def examples() -> list[Example]:
    found = []
    for block in _BLOCK.findall(PAGE.read_text()):
        first, _, output = block.partition("\n")
        assert first.startswith("$ meshcp "), first
        command = first.removeprefix("$ meshcp ")
        status = 0
        if match := _STATUS.search(command):
            status, command = int(match[1]), command[: match.start()]
        found.append(Example(tuple(shlex.split(command)), status, output))
    return found


def matches(expected: str, actual: str) -> bool:
    """`actual` is what `expected` shows, `…` standing for any text (alone on a line: any lines)."""
    pattern = []
    for line in expected.splitlines():
        if line == "…":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(".*?".join(re.escape(part) for part in line.split("…")) + r"\n")
    return re.fullmatch("".join(pattern), actual, re.DOTALL) is not None


async def _check(example: Example, extra: list[str]) -> None:
    status, out, err = await run(*example.args, *extra, cwd=ROOT)
    assert status == example.status, f"{example}: exit status {status}\n{err}"
    assert matches(example.output, out), f"{example} printed:\n{out}\nthe page shows:\n{example.output}"


def test_the_page_has_examples_of_every_operator_command() -> None:
    shown = {example.args[0] for example in examples()}
    assert {"analyze", "compile", "policy", "proxy", "version", "ca", "completion"} <= shown
    actions = {example.args[:2] for example in examples()}
    assert {("proxy", "status"), ("proxy", "config"), ("ca", "show"), ("ca", "rotate")} <= actions
    assert ("ca", "finish-rotation") in actions


@pytest.mark.parametrize("example", [e for e in examples() if not e.controller and not e.offline_ca], ids=str)
async def test_offline_example(example: Example) -> None:
    await _check(example, [])


async def test_ca_examples_without_a_controller(tmp_path: Path) -> None:
    state = tmp_path / "state"
    await InternalCA.open(DirectoryStore(state))
    for example in (e for e in examples() if e.offline_ca):
        await _check(example, ["--state-dir", str(state), "--server", "127.0.0.1:9"])


@REAL_ENVOY[0]
@REAL_ENVOY[1]
async def test_examples_asking_a_controller(tmp_path: Path) -> None:
    async with running_mesh(tmp_path) as mesh:
        await wait_synced(mesh)
        for example in (e for e in examples() if e.controller):
            extra = ["--server", mesh.debug]
            if example.args[0] == "ca":
                extra += ["--state-dir", str(mesh.state)]
            await _check(example, extra)


def test_the_matcher() -> None:
    assert matches("a …\n…\nz\n", "a b c\nx\ny\nz\n")
    assert matches("a\n…\nz\n", "a\nz\n")
    assert not matches("a\nz\n", "a\nb\nz\n")
    assert not matches("a …\n", "b c\n")
