"""The `meshcp` command as users run it: a real process, signals, and error messages."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys

import aiohttp
import pytest

MESHCP = [sys.executable, "-m", "meshcp"]


async def run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *MESHCP, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_serve_answers_health_and_stops_cleanly_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        *MESHCP,
        "serve",
        "--insecure-xds",
        "--xds-address",
        "127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        match = re.search(
            r"serving xDS on 127\.0\.0\.1:(\d+) \(plaintext\), HTTP on 127\.0\.0\.1:(\d+)", line
        )
        assert match, line
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{match[2]}/healthz") as reply:
                assert reply.status == 200
            async with http.get(f"http://127.0.0.1:{match[2]}/readyz") as reply:
                assert reply.status == 200
        process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert "shutting down" in rest
        assert "Traceback" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve"], "xDS needs mutual TLS"),
        (["serve", "--insecure-xds", "--xds-address", "nowhere"], "'nowhere' is not HOST:PORT"),
        (
            [
                "serve",
                "--xds-cert",
                "/missing.pem",
                "--xds-key",
                "/missing.key",
                "--xds-client-ca",
                "/missing-ca.pem",
            ],
            "cannot load the xDS TLS files",
        ),
        (["serve", "--insecure-xds", "--admission", "0"], "--admission must be at least 1"),
    ],
)
async def test_bad_arguments_give_a_clear_error_and_status_2(args: list[str], message: str) -> None:
    code, output = await run(*args)
    assert code == 2
    assert message in output
    assert "Traceback" not in output


async def test_port_in_use_is_reported_without_traceback() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, output = await run("serve", "--insecure-xds", "--xds-address", f"127.0.0.1:{port}")
    assert code == 1
    assert f"cannot listen for xDS on 127.0.0.1:{port}" in output
    assert "Traceback" not in output
