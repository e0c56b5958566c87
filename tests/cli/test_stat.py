"""`meshcp stat` and `meshcp edges` as users run them, without a lab: usage errors exit 2
and a Prometheus that does not answer exits 1, each with one line and no traceback."""

from __future__ import annotations

import socket

import pytest

from tests.cli.test_main import run


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("stat", "foo"), "meshcp: error: unknown kind 'foo'"),
        (("edges", "svc"), "meshcp: error: unknown kind 'svc'"),
        (("stat", "deploy", "--window", "5x"), "meshcp: error: bad window '5x'"),
        (("stat", "svc", "--from", "svc/x"), "meshcp: error: --from takes pod, deploy or ns"),
        (("stat", "trafficsplit"), "meshcp: error: stat trafficsplit needs --source DIR"),
    ],
)
async def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    status, output = await run(*args, "--prometheus-url", f"http://127.0.0.1:{_closed_port()}")
    assert status == 2, output
    assert output.startswith(message), output
    assert len(output.strip().splitlines()) == 1, output


@pytest.mark.parametrize("command", [("stat", "deploy"), ("edges", "pod")])
async def test_unreachable_prometheus_exits_1_with_one_line(command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    status, output = await run(*command, "--prometheus-url", url)
    assert status == 1, output
    assert output.startswith(f"meshcp: Prometheus at {url} is unreachable:"), output
    assert len(output.strip().splitlines()) == 1, output


async def test_a_trafficsplit_missing_from_the_manifests_exits_1() -> None:
    status, output = await run(
        "stat",
        "trafficsplit",
        "-n",
        "nowhere",
        "--source",
        "examples/bookstore",
        "--prometheus-url",
        "http://127.0.0.1:9",
    )
    assert status == 1, output
    assert output.strip().splitlines()[-1] == "meshcp: error: no TrafficSplit in nowhere in the manifests", (
        output
    )
