"""Every PromQL expression of every Grafana dashboard in deploy/grafana, run against real
data: a lab's real Envoy sidecars and controller scraped by the lab's Prometheus; for what
the lab does not run, a real Prometheus on loopback scraping a real `meshcp inject`
(answering real AdmissionReviews, over HTTPS) or a real `meshcp serve --source kubernetes`
(watching kmock's API server). Each expression, with its template variables set to values
their own queries offer and Grafana's `$__rate_interval`, `$__interval` and `$__range`
replaced, must return data; which Prometheus answers it follows from the metrics it names
(`tests.support.grafana.scraped_from`).

Traffic: the quiet `egress-client-0` (service account bookbuyer) calls a server that fails
on purpose (500 on /fail), so the success panels meet real 5xx, and buys books at the
bookstore (which restocks from the warehouse), so a pod both calls and is called. A change
of the TrafficSplit's weights makes the controller push, so convergence has samples.
The tests share one lab and run in file order; the last one takes the lab down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import aiohttp
import kmock
import pytest

from meshcp.certs import DirectoryStore, InternalCA
from meshcp.injector.app import MUTATE_PATH
from meshcp.kpi.prometheus import Prometheus, Sample
from meshcp.lab import layout
from meshcp.lab.netns_http import get
from meshcp.lab.network import LabError
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.sources.kubernetes import RESOURCES
from tests.injector.conftest import SERVER_NAME, FakeApi, serving_pair, write_pair
from tests.injector.reviews import MESH_NAMESPACE, PLAIN_NAMESPACE, bare_pod, deployment_pod, review
from tests.injector.test_server import kubeconfig
from tests.lab.driver import LabDriver, bookstore_lab, lab_leftovers, wait_for
from tests.lab.failing_app import FAILING_APP, FLAKY_MANIFESTS
from tests.sources.kube_fixtures import Emulator
from tests.sources.kube_objects import BY_KIND, key, namespace, seed, service, stored, url_of
from tests.support import eventually, free_port, grafana
from tests.support.prometheus import PrometheusServer

CLIENT = "bookbuyer/egress-client-0"
BUYER_HEADERS = ("client-app=bookbuyer", "user-agent=Go-http-client/1.1")
FLAKY = "http://flaky.flaky:8080"
BUY = "http://bookstore.bookstore:14001/buy-a-book/new"
#: The lab scrapes every 2 s and Envoy flushes its stats every 5 s; the first scrapes wait
#: for Prometheus to start and for file_sd.
DATA_DEADLINE = 120.0
S2S = "meshcp-service-to-service"
#: What each dashboard's variables are set to where the traffic above makes data; the value
#: must be among the options the variable's own query offers.
PREFERRED = {
    S2S: {
        "destination_namespace": "flaky",
        "destination_service": "flaky",
        "source_namespace": "bookbuyer",
        "source_service_account": "bookbuyer",
    },
    "meshcp-workload-to-workload": {
        "source_namespace": "bookbuyer",
        "source_workload": "egress-client",
        "destination_namespace": "flaky",
        "destination_workload": "flaky",
    },
    "meshcp-pod": {"namespace": "bookstore", "pod": "bookstore-v1-0"},
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    yield from bookstore_lab(
        tmp_path_factory.mktemp("bookstore"),
        prometheus=True,
        extra={"flaky.yaml": FLAKY_MANIFESTS, "apps/flaky.py": FAILING_APP},
    )


def _lab_prometheus() -> Prometheus:
    async def fetch(path: str) -> tuple[int, bytes]:
        return await get(layout.NODE_NETNS, layout.PROMETHEUS_PORT, path, layout.PROMETHEUS_HOST)

    return Prometheus(f"http://{layout.PROMETHEUS_HOST}:{layout.PROMETHEUS_PORT}", fetch)


def _report(results: Mapping[str, list[Sample]]) -> str:
    """Which expressions have no data, and which have only NaN (no event in the window)."""
    empty = sorted(name for name, samples in results.items() if not samples)
    nan = sorted(
        name for name, samples in results.items() if samples and all(math.isnan(s.value) for s in samples)
    )
    return f"{len(results)} expressions; no data: {empty}; only NaN: {nan}"


def _sees_failures(results: Mapping[str, list[Sample]]) -> bool:
    """The 500s of the failing server show as 5xx and as less than full success (5xx
    counters start at the first failure, so a rate sees them from the next burst on)."""
    classes = {
        s.labels["envoy_response_code_class"] for s in results[f"{S2S} / Responses by status class / A"]
    }
    success = [s.value for s in results[f"{S2S} / Success / A"]]
    return "5" in classes and all(value < 1 for value in success)


def _traffic(lab: LabDriver) -> None:
    failed = lab.http(CLIENT, f"{FLAKY}/fail", count=3)
    assert failed["statuses"] == {"500": 3}, failed
    assert lab.http(CLIENT, f"{FLAKY}/ok", count=3)["statuses"] == {"200": 3}
    lab.http(CLIENT, BUY, count=8, headers=BUYER_HEADERS)


def test_every_lab_expression_has_data(lab: LabDriver) -> None:
    wait_for(lambda: lab.status()["prometheus"]["ready"], 60, "the lab's Prometheus ready")
    lab.edit(
        "smi.yaml", lambda text: text.replace("weight: 75", "weight: 70").replace("weight: 25", "weight: 30")
    )
    lab.apply()  # a change every sidecar of the bookstore's clients is pushed
    client = _lab_prometheus()
    last: list[str] = []

    async def all_have_data() -> bool:
        _traffic(lab)  # keeps each rate window's requests fresh while scrapes catch up
        try:
            expressions = await grafana.expressions(client, grafana.LAB, PREFERRED)
        except (AssertionError, LabError) as error:  # a variable without values yet
            last[:] = [str(error)]
            return False
        results = await grafana.evaluate(client, expressions)
        last[:] = [_report(results)]
        return all(results.values()) and _sees_failures(results)

    asyncio.run(
        eventually(all_have_data, DATA_DEADLINE, "data for every dashboard expression", lambda: "".join(last))
    )
    print(*last)  # the count and the NaN-only ones, in the output


async def _post(url: str, tls: ssl.SSLContext, body: bytes) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + MUTATE_PATH,
            data=body,
            ssl=tls,
            server_hostname=SERVER_NAME,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        await response.read()
        return response.status


async def _admissions(url: str, tls: ssl.SSLContext) -> None:
    """One review of each result the injector counts but `error`: injected, skipped (not in
    the mesh), denied (a sidecar it cannot name), malformed (not an AdmissionReview)."""
    unnameable = bare_pod()
    unnameable["spec"]["serviceAccountName"] = ".".join(["a" * 50] * 4)
    for document in (
        review(deployment_pod()),
        review(deployment_pod(), namespace=PLAIN_NAMESPACE),
        review(unnameable),
    ):
        assert await _post(url, tls, json.dumps(document).encode()) == 200
    assert await _post(url, tls, b'{"kind": "AdmissionReview"') == 400


@contextlib.asynccontextmanager
async def _process(
    log: Path, *args: str, ready: str, tls: ssl.SSLContext | None = None
) -> AsyncIterator[None]:
    """`meshcp <args>` as a process, until `ready` (a URL) answers 200; stopped on exit."""
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshcp", *args, stdout=output, stderr=output
        )

    async def answers() -> bool:
        if process.returncode is not None:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"meshcp {args[0]} exited {process.returncode}:\n{output}")
        async with (
            aiohttp.ClientSession() as session,
            session.get(ready, ssl=tls or False, server_hostname=SERVER_NAME if tls else None) as response,
        ):
            return response.status == 200

    try:
        await eventually(answers, 30, f"meshcp {args[0]} ready", log.read_text)
        yield
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def _injector(directory: Path, api: FakeApi) -> AsyncIterator[tuple[str, ssl.SSLContext, InternalCA]]:
    """`meshcp inject` on loopback, with the controller's CA on disk and kmock as its
    Kubernetes API."""
    state = directory / "ca"
    ca = await InternalCA.open(DirectoryStore(state))
    cert, key = write_pair(directory, await serving_pair(ca))
    url = f"https://127.0.0.1:{free_port()}"
    tls = ssl.create_default_context(cadata=await ca.trust_bundle())
    async with _process(
        directory / "injector.log",
        "inject",
        f"--tls-cert={cert}",
        f"--tls-key={key}",
        f"--address={url.removeprefix('https://')}",
        f"--state-dir={state}",
        f"--kubeconfig={kubeconfig(directory / 'kubeconfig', api.url)}",
        ready=url + "/healthz",
        tls=tls,
    ):
        yield url, tls, ca


async def test_every_injector_expression_has_data(tmp_path: Path) -> None:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        api = FakeApi(emulator)
        api.add_namespace(MESH_NAMESPACE, {MESH_LABEL: "meshcp"})
        api.add_namespace(PLAIN_NAMESPACE)
        async with _injector(tmp_path, api) as (url, tls, ca):
            bundle = tmp_path / "trust.pem"
            bundle.write_text(await ca.trust_bundle())
            target = url.removeprefix("https://")
            async with PrometheusServer([target], ca_file=bundle, server_name=SERVER_NAME) as prometheus:
                await _admissions(url, tls)
                # cert-manager renews the webhook's certificate: the injector reloads it at
                # the next handshake.
                write_pair(tmp_path, await serving_pair(ca))
                last: list[str] = []

                async def all_have_data() -> bool:
                    await _admissions(url, tls)
                    try:
                        expressions = await grafana.expressions(
                            prometheus.client, grafana.INJECTOR, PREFERRED
                        )
                    except AssertionError as error:  # not scraped yet
                        last[:] = [str(error)]
                        return False
                    results = await grafana.evaluate(prometheus.client, expressions)
                    last[:] = [_report(results)]
                    return all(results.values())

                await eventually(
                    all_have_data,
                    60,
                    "data for every injector expression",
                    lambda: "".join(last) + "\n" + prometheus.log,
                )
                print(*last)  # the count and the NaN-only ones, in the output


async def test_every_kubernetes_source_expression_has_data(tmp_path: Path) -> None:
    """`meshcp serve --source kubernetes` (the lab serves files) against kmock's API server,
    which does not serve UDPRoute (its CRD is "not installed"): watch events of objects
    created after the start, and the restarts of the UDPRoute loop."""
    async with Emulator() as emulator, kmock.Server(emulator):
        emulator.declare(*(key(r) for r in RESOURCES if r.kind != "UDPRoute"))
        seed(emulator, namespace("shop"))
        http = free_port()
        async with (
            _process(
                tmp_path / "serve.log",
                "serve",
                "--source=kubernetes",
                f"--kubeconfig={kubeconfig(tmp_path / 'kubeconfig', str(emulator.url))}",
                f"--xds-address=127.0.0.1:{free_port()}",
                f"--http-address=127.0.0.1:{http}",
                "--debug-address=127.0.0.1:0",
                f"--state-dir={tmp_path / 'state'}",
                ready=f"http://127.0.0.1:{http}/readyz",
            ),
            PrometheusServer([f"127.0.0.1:{http}"]) as prometheus,
        ):
            last: list[str] = []
            made: list[str] = []

            async def all_have_data() -> bool:
                name = f"web-{len(made)}"
                await emulator.post(url_of(BY_KIND["Service"], "shop"), json=stored(service(name)))
                made.append(name)
                try:
                    expressions = await grafana.expressions(prometheus.client, grafana.KUBERNETES, PREFERRED)
                except AssertionError as error:  # not scraped yet
                    last[:] = [str(error)]
                    return False
                results = await grafana.evaluate(prometheus.client, expressions)
                last[:] = [_report(results)]
                return all(results.values())

            await eventually(
                all_have_data,
                60,
                "data for every Kubernetes expression",
                lambda: "".join(last) + prometheus.log,
            )
            print(*last)  # the count and the NaN-only ones, in the output


def test_down_removes_the_lab(lab: LabDriver) -> None:
    lab.down()
    assert lab_leftovers() == []
