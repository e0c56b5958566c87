"""`meshcp stat` and `meshcp edges` as users run them, without a lab: usage errors exit 2
and a Prometheus that does not answer exits 1, each with one line and no traceback."""

from __future__ import annotations

import socket

import pytest

from tests.cli.test_main import run
from tests.support.prometheus import Exporter, PrometheusServer


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
    assert output.startswith(f"meshcp: error: Prometheus at {url} is unreachable:"), output
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


async def test_no_data_says_what_is_missing() -> None:
    """Against a real Prometheus holding one sidecar's series: an unknown namespace is named
    as such; a known one without traffic in the window says so."""
    text = (
        'envoy_cluster_upstream_cx_active{source_namespace="bookbuyer",source_pod="bookbuyer-0",'
        'source_service_account="bookbuyer",destination_namespace="bookstore",'
        'destination_service="bookstore",destination_port="14001"} 0\n'
    )
    async with Exporter(text) as exporter, PrometheusServer([exporter.target]) as server:
        await server.wait_for_scrapes(exporter, 2)
        status, output = await run("stat", "deploy", "-n", "nowhere", "--prometheus-url", server.url)
        assert (status, output.strip()) == (
            1,
            "meshcp: error: no data: no sidecar series in Prometheus name namespace 'nowhere' "
            "(is it meshed and scraped, and spelt right?)",
        )
        status, output = await run("edges", "deploy", "-n", "bookbuyer", "--prometheus-url", server.url)
        assert (status, output.strip()) == (
            1,
            "meshcp: error: no data: no meshed traffic for edges in namespace bookbuyer in the last 1m (yet)",
        )
