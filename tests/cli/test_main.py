"""The `meshcp` command as users run it: a real process, signals, and error messages."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from meshcp.certs import DirectoryStore, InternalCA
from meshcp.certs.root_rotation import Phase
from tests.support import eventually

MESHCP = [sys.executable, "-m", "meshcp"]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookstore"


async def run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *MESHCP, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def wait_for_line(stream: asyncio.StreamReader, pattern: str) -> re.Match[str]:
    """Read log lines until one matches; fail with what was read."""
    seen = []
    while line := (await asyncio.wait_for(stream.readline(), 30)).decode():
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


@pytest.mark.parametrize(("flags", "security"), [(["--insecure-xds"], "plaintext"), ([], "mTLS")])
async def test_serve_answers_health_and_stops_cleanly_on_sigterm(
    tmp_path: Path, flags: list[str], security: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        *MESHCP,
        "serve",
        "--source",
        str(EXAMPLE),
        *flags,
        "--state-dir",
        str(tmp_path / "state"),
        "--xds-address",
        "127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
        "--debug-address",
        "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        pattern = rf"serving xDS on 127\.0\.0\.1:(\d+) \({security}\), HTTP on 127\.0\.0\.1:(\d+)"
        match = await wait_for_line(process.stderr, pattern)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{match[2]}/healthz") as reply:
                assert reply.status == 200

            async def ready() -> bool:  # once the bookstore is compiled
                async with http.get(f"http://127.0.0.1:{match[2]}/readyz") as reply:
                    return reply.status == 200

            await eventually(ready, timeout=30, what="/readyz 200")
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
        (["serve", "--xds-cert", "/missing.pem"], "--xds-cert, --xds-key and --xds-client-ca go together"),
        (["serve", "--cert-validity", "forever"], "'forever' is not a duration"),
        (["serve", "--ca-provider", "cfssl"], "--cfssl-url is required"),
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
            "--xds-cert /missing.pem: no such file",
        ),
        (["serve", "--insecure-xds", "--admission", "0"], "--admission must be at least 1"),
        (
            ["serve", "--insecure-xds", "--max-connection-age", "-1"],
            "--max-connection-age must be 0 (never) or a number of seconds",
        ),
        (["serve", "--insecure-xds"], "serve needs --source DIR (manifests, watched) or --source kubernetes"),
    ],
)
async def test_bad_arguments_give_a_clear_error_and_status_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, output = await run(*args, "--state-dir", str(tmp_path))
    assert code == 2
    assert message in output
    assert "Traceback" not in output


async def test_port_in_use_is_reported_without_traceback(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, output = await run(
            "serve",
            "--source",
            str(EXAMPLE),
            "--insecure-xds",
            "--state-dir",
            str(tmp_path),
            "--xds-address",
            f"127.0.0.1:{port}",
        )
    assert code == 1
    assert f"cannot listen for xDS on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


async def test_ca_show_and_rotate(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    code, output = await run("ca", "show", "--state-dir", state)
    assert code == 1
    assert "no CA found" in output and "Traceback" not in output

    # A controller creates the CA on first start; here the library does, as serve would.
    ca = await InternalCA.open(DirectoryStore(state))
    code, output = await run("ca", "show", "--state-dir", state, "--output", "json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["phase"] == "stable"
    assert shown["root"]["sha256_fingerprint"]
    assert "PRIVATE KEY" not in output

    code, output = await run("ca", "rotate", "--state-dir", state)
    assert code == 0, output
    assert "phase: trusting" in output
    assert await ca.reload()
    assert ca.state.phase is Phase.TRUSTING
    assert ca.state.previous is not None
    assert ca.state.previous.id != ca.state.active.id
    assert ca.state.signing_root is ca.state.previous
    code, output = await run("ca", "show", "--state-dir", state, "--output", "json")
    assert code == 0, output
    assert json.loads(output)["phase"] == "trusting"


async def test_inject_with_missing_tls_files_is_a_clear_error(tmp_path: Path) -> None:
    code, output = await run(
        "inject",
        "--tls-cert",
        str(tmp_path / "none.pem"),
        "--tls-key",
        str(tmp_path / "none.key"),
        "--state-dir",
        str(tmp_path),
    )
    assert code == 1
    assert "cannot load the webhook's TLS files" in output
    assert "Traceback" not in output
