"""The webhook over real HTTPS, with kmock as the Kubernetes API and the internal CA."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from meshcp.certs import DirectoryStore, InternalCA, Issuer, ProxyIdentity
from meshcp.certs.pem import load_certificates
from meshcp.certs.setup import CaSettings
from meshcp.injector.admission import ISSUE_RETRY, Injector
from meshcp.injector.app import MUTATE_PATH, create_app
from meshcp.injector.errors import InjectorError
from meshcp.injector.kube import KubeCluster
from meshcp.injector.metrics import InjectorMetrics
from meshcp.injector.pod_patch import ORIGINAL_PROBES_ANNOTATION
from meshcp.injector.server import InjectorServer, run_injector
from meshcp.injector.settings import InjectorSettings
from meshcp.injector.tls_reload import ReloadingTls
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.policy.membership import PROXY_UUID_LABEL
from tests.injector.conftest import SERVER_NAME, TEMPLATE, FakeApi, RunningInjector, serving_pair, write_pair
from tests.injector.injection import with_annotations
from tests.injector.reviews import (
    MESH_NAMESPACE,
    PLAIN_NAMESPACE,
    apply_and_validate,
    bare_pod,
    deployment_pod,
    patch_of,
    review,
)


async def post(
    url: str, tls: ssl.SSLContext, body: bytes | dict[str, Any], *, path: str = MUTATE_PATH
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + path,
            data=data,
            ssl=tls,
            server_hostname=SERVER_NAME,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        text = await response.text()
        if response.content_type == "application/json":
            return response.status, json.loads(text)
        return response.status, text


async def get(url: str, tls: ssl.SSLContext, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + path, ssl=tls, server_hostname=SERVER_NAME) as response,
    ):
        return response.status, await response.text()


def proxy_uuid_of(operations: list[dict[str, Any]]) -> str:
    for op in operations:
        if op["path"] == "/metadata/labels/meshcp.dev~1proxy-uuid":
            value: str = op["value"]
            return value
    raise AssertionError("no proxy UUID label in the patch")


async def test_injects_and_creates_the_bootstrap_secret(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi, ca: InternalCA
) -> None:
    pod = deployment_pod()
    document = review(pod)
    status, answer = await post(injector.url, client_tls, document)
    assert status == 200
    assert answer["response"]["uid"] == document["request"]["uid"]
    assert answer["response"]["allowed"] is True
    operations = patch_of(answer)
    patched = apply_and_validate(pod, operations)
    proxy_uuid = patched["metadata"]["labels"][PROXY_UUID_LABEL]
    assert ORIGINAL_PROBES_ANNOTATION in patched["metadata"]["annotations"]

    secrets = api.secrets(MESH_NAMESPACE)
    secret = secrets[f"meshcp-bootstrap-{proxy_uuid}"]
    files = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    leaf = load_certificates(files["tls.crt"])[0]
    config = json.loads(files["bootstrap.json"])
    proxy = ProxyIdentity.parse(config["node"]["id"])
    assert proxy.proxy_uuid == proxy_uuid
    # The sidecar serves the probes the patch rewrote.
    originals = json.loads(patched["metadata"]["annotations"][ORIGINAL_PROBES_ANNOTATION])
    listeners = config["staticResources"]["listeners"]
    assert [listener["name"] for listener in listeners] == [f"probe-{p['probe']}" for p in originals]
    assert [cluster["name"] for cluster in config["staticResources"]["clusters"][1:]] == [
        f"probe-{p['probe']}-{p['container']}" for p in originals
    ]
    assert str(proxy.identity) == "bookstore/bookstore"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [proxy.name]
    assert files["ca.crt"] == await ca.trust_bundle()
    assert injector.issuer.issued == 1

    status, text = await get(injector.url, client_tls, "/metrics")
    assert status == 200
    assert 'meshcp_injector_admissions_total{result="injected"} 1.0' in text
    assert 'meshcp_injector_admission_duration_seconds_count{result="injected"} 1.0' in text


async def test_v1beta1_is_answered_in_v1beta1(injector: RunningInjector, client_tls: ssl.SSLContext) -> None:
    document = review(bare_pod(), api_version="admission.k8s.io/v1beta1")
    status, answer = await post(injector.url, client_tls, document)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert answer["response"]["uid"] == document["request"]["uid"]
    assert patch_of(answer)


async def test_pods_outside_the_mesh_are_untouched(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi
) -> None:
    status, answer = await post(injector.url, client_tls, review(deployment_pod(), namespace=PLAIN_NAMESPACE))
    assert status == 200
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]
    assert "not monitored" in answer["response"]["auditAnnotations"]["sidecar-injection"]
    assert api.secrets(PLAIN_NAMESPACE) == {}
    assert injector.issuer.issued == 0


async def test_dry_run_patches_without_side_effects(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi
) -> None:
    pod = deployment_pod()
    status, answer = await post(injector.url, client_tls, review(pod, dry_run=True))
    assert status == 200
    apply_and_validate(pod, patch_of(answer))
    assert api.secrets(MESH_NAMESPACE) == {}
    assert injector.issuer.issued == 0


async def test_malformed_body_is_a_400_with_the_reason(
    injector: RunningInjector, client_tls: ssl.SSLContext
) -> None:
    status, text = await post(injector.url, client_tls, b'{"kind": "AdmissionReview"')
    assert status == 400
    assert "not JSON" in text
    status, text = await post(injector.url, client_tls, {"apiVersion": "v1", "kind": "AdmissionReview"})
    assert status == 400
    assert "apiVersion must be" in text


async def test_api_failure_refuses_the_pod_with_the_reason(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi
) -> None:
    (
        api.emulator[f"post /api/v1/namespaces/{MESH_NAMESPACE}/secrets"]
        << 403
        << {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "message": 'secrets is forbidden: User "system:serviceaccount:meshcp:injector" cannot create',
            "reason": "Forbidden",
            "code": 403,
        }
    )
    document = review(deployment_pod())
    status, answer = await post(injector.url, client_tls, document)
    assert status == 200
    response = answer["response"]
    assert response["uid"] == document["request"]["uid"]
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "cannot create secret" in message and "403" in message and "forbidden" in message


async def test_unnameable_sidecar_is_refused(injector: RunningInjector, client_tls: ssl.SSLContext) -> None:
    pod = bare_pod()
    pod["spec"]["serviceAccountName"] = ".".join(["a" * 50] * 4)  # valid, but too long for the proxy name
    status, answer = await post(injector.url, client_tls, review(pod))
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert "cannot name the sidecar" in answer["response"]["status"]["message"]


async def test_concurrent_pods_get_their_own_sidecars(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi
) -> None:
    pods = [deployment_pod() for _ in range(40)]
    answers = await asyncio.gather(*(post(injector.url, client_tls, review(pod)) for pod in pods))
    uuids = {proxy_uuid_of(patch_of(answer)) for status, answer in answers if status == 200}
    assert len(uuids) == 40
    assert len(api.secrets(MESH_NAMESPACE)) == 40


async def test_concurrent_reads_of_a_namespace_share_one_request(api: FakeApi) -> None:
    async with KubeCluster.connect(configuration=api.configuration()) as cluster:
        found = await asyncio.gather(*(cluster.namespace(MESH_NAMESPACE) for _ in range(20)))
        assert {info.labels.get(MESH_LABEL) for info in found if info is not None} == {"meshcp"}
        assert api.namespace_reads(MESH_NAMESPACE) == 1
        assert await cluster.namespace("nowhere") is None
        await cluster.namespace(MESH_NAMESPACE)  # nothing is cached beyond the request in flight
        assert api.namespace_reads(MESH_NAMESPACE) == 2


async def test_the_clusters_meshconfig_shapes_the_sidecar(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi
) -> None:
    api.emulator.resources["config.meshcp.dev/v1alpha1/meshconfigs"].namespaced = False
    api.emulator.objects["config.meshcp.dev/v1alpha1/meshconfigs", None, "meshcp"] = {
        "apiVersion": "config.meshcp.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "meshcp"},
        "spec": {
            "meshName": "shop",
            "sidecarImage": "registry.example/envoy:1.40",
            "outboundPortExclusions": [25],
        },
    }
    api.add_namespace("shop", {MESH_LABEL: "shop"})
    status, answer = await post(injector.url, client_tls, review(deployment_pod()))
    assert status == 200
    assert "not monitored by mesh shop" in answer["response"]["auditAnnotations"]["sidecar-injection"]
    pod = deployment_pod()
    status, answer = await post(injector.url, client_tls, review(pod, namespace="shop"))
    assert status == 200
    patched = apply_and_validate(pod, patch_of(answer))
    envoy = next(c for c in patched["spec"]["containers"] if c["name"] == "envoy")
    init = next(c for c in patched["spec"]["initContainers"] if c["name"] == "meshcp-init")
    assert envoy["image"] == "registry.example/envoy:1.40"
    assert "-A PROXY_OUTPUT -p tcp --dport 25 -j RETURN" in init["command"][2]


async def test_health(injector: RunningInjector, client_tls: ssl.SSLContext) -> None:
    assert await get(injector.url, client_tls, "/healthz") == (200, "ok\n")


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "injector", "user": {"token": "test"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "injector"}}],
                "current-context": "kmock",
            }
        )
    )
    return path


async def test_run_injector_serves_until_stopped(tmp_path: Path, api: FakeApi) -> None:
    """The CLI's entry point: the controller's CA from its state directory, kubeconfig."""
    state = tmp_path / "ca"
    ca = await InternalCA.open(DirectoryStore(state))  # the controller created it
    cert, key = write_pair(tmp_path, await serving_pair(ca))
    settings = InjectorSettings(
        tls_cert=cert,
        tls_key=key,
        host="127.0.0.1",
        port=0,
        kubeconfig=kubeconfig(tmp_path / "kubeconfig", api.url),
        ca=CaSettings(state_dir=state),
    )
    stop = asyncio.Event()
    ports: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.create_task(run_injector(settings, stop, ready=ports.put_nowait))
    try:
        port = await asyncio.wait_for(ports.get(), 10)
        tls = ssl.create_default_context(cadata=await ca.trust_bundle())
        status, answer = await post(f"https://127.0.0.1:{port}", tls, review(bare_pod()))
        assert status == 200 and patch_of(answer)
        assert len(api.secrets(MESH_NAMESPACE)) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_run_injector_refuses_to_invent_a_ca(tmp_path: Path, api: FakeApi) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path / "elsewhere"))
    cert, key = write_pair(tmp_path, await serving_pair(ca))
    settings = InjectorSettings(
        tls_cert=cert,
        tls_key=key,
        port=0,
        kubeconfig=kubeconfig(tmp_path / "kubeconfig", api.url),
        ca=CaSettings(state_dir=tmp_path / "empty"),
    )
    with pytest.raises(Exception, match="no CA found"):
        await run_injector(settings, asyncio.Event())
    missing = InjectorSettings(tls_cert=tmp_path / "nope.crt", tls_key=key)
    with pytest.raises(InjectorError, match="TLS files"):
        await run_injector(missing, asyncio.Event())


async def test_a_ca_reload_that_cannot_recover_ends_the_injector_in_one_line(
    tmp_path: Path, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the CA reload loop meets an error it does not retry (transient
    ones are logged and retried); the injector ends with one line naming the part, not an
    exception group, and its listener is closed."""
    state = tmp_path / "ca"
    ca = await InternalCA.open(DirectoryStore(state))
    cert, key = write_pair(tmp_path, await serving_pair(ca))
    settings = InjectorSettings(
        tls_cert=cert,
        tls_key=key,
        host="127.0.0.1",
        port=0,
        kubeconfig=kubeconfig(tmp_path / "kubeconfig", api.url),
        ca=CaSettings(state_dir=state),
        ca_reload_interval=0.01,
    )

    async def broken(self: InternalCA) -> None:
        raise RuntimeError("the state directory's filesystem went read-only")

    monkeypatch.setattr(InternalCA, "reload", broken)
    ports: asyncio.Queue[int] = asyncio.Queue()
    with pytest.raises(InjectorError) as failed:
        await asyncio.wait_for(run_injector(settings, asyncio.Event(), ready=ports.put_nowait), 30)
    assert str(failed.value) == (
        "the injector's CA reload stopped: the state directory's filesystem went read-only"
    )
    port = ports.get_nowait()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_osm_names_through_the_webhook(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi
) -> None:
    """A namespace labelled only with OSM's monitored-by is meshed; OSM's sidecar-injection
    annotation keeps a pod out; where a pod carries both names, meshcp's wins and the
    answer warns (kubectl shows it), naming the pod."""
    api.add_namespace("osm-shop", {"openservicemesh.io/monitored-by": "meshcp"})
    pod = deployment_pod()
    status, answer = await post(injector.url, client_tls, review(pod, namespace="osm-shop"))
    assert status == 200
    patched = apply_and_validate(pod, patch_of(answer))
    assert PROXY_UUID_LABEL in patched["metadata"]["labels"]
    assert "warnings" not in answer["response"]
    assert api.secrets("osm-shop")

    off = with_annotations(deployment_pod(), **{"openservicemesh.io/sidecar-injection": "disabled"})
    status, answer = await post(injector.url, client_tls, review(off, namespace="osm-shop"))
    assert status == 200
    assert "patch" not in answer["response"]
    assert answer["response"]["auditAnnotations"]["sidecar-injection"] == (
        "skipped: injection disabled by the pod annotation openservicemesh.io/sidecar-injection"
    )

    both = with_annotations(
        deployment_pod(),
        **{"openservicemesh.io/sidecar-injection": "disabled", "meshcp.dev/sidecar-injection": "enabled"},
    )
    status, answer = await post(injector.url, client_tls, review(both, namespace="osm-shop"))
    assert status == 200
    assert patch_of(answer)
    (warning,) = answer["response"]["warnings"]
    assert warning.startswith("pod osm-shop/bookstore-v1-")
    assert "meshcp's meshcp.dev/sidecar-injection is used" in warning


async def test_an_osm_meshconfig_in_the_cluster_shapes_the_sidecar_under_meshcps(
    injector: RunningInjector, client_tls: ssl.SSLContext, api: FakeApi
) -> None:
    """OSM's MeshConfig (in OSM's namespace) sets what meshcp's leaves unset: its sidecar
    log level and outbound port exclusions reach the patch; the image meshcp's sets wins."""
    api.emulator.resources["config.meshcp.dev/v1alpha1/meshconfigs"].namespaced = False
    api.emulator.objects["config.meshcp.dev/v1alpha1/meshconfigs", None, "meshcp"] = {
        "apiVersion": "config.meshcp.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "meshcp"},
        "spec": {"sidecarImage": "registry.example/envoy:1.40"},
    }
    osm = "config.openservicemesh.io/v1alpha2/meshconfigs"
    api.emulator.resources[osm].namespaced = True
    api.emulator.objects[osm, "osm-system", "osm-mesh-config"] = {
        "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
        "spec": {
            "sidecar": {"logLevel": "error", "envoyImage": "openservicemesh/envoy:v1.22"},
            "traffic": {"outboundPortExclusionList": [6379]},
        },
    }
    pod = deployment_pod()
    status, answer = await post(injector.url, client_tls, review(pod))
    assert status == 200
    patched = apply_and_validate(pod, patch_of(answer))
    envoy = next(c for c in patched["spec"]["containers"] if c["name"] == "envoy")
    init = next(c for c in patched["spec"]["initContainers"] if c["name"] == "meshcp-init")
    assert envoy["image"] == "registry.example/envoy:1.40"
    assert "--log-level" in envoy["args"] and envoy["args"][envoy["args"].index("--log-level") + 1] == "error"
    assert "-A PROXY_OUTPUT -p tcp --dport 6379 -j RETURN" in init["command"][2]


async def test_mesh_name_osm_injects_osm_labelled_namespaces_only(
    api: FakeApi, ca: InternalCA, serving_files: tuple[Path, Path], client_tls: ssl.SSLContext
) -> None:
    """`meshcp inject --mesh-name osm`: a namespace labelled with OSM's monitored-by: osm
    (OSM's default mesh name) is injected; one labelled for the mesh `meshcp` is not."""
    api.add_namespace("osm-shop", {"openservicemesh.io/monitored-by": "osm"})
    metrics = InjectorMetrics()
    tls = ReloadingTls(*serving_files, on_reload=metrics.tls_reloaded)
    async with KubeCluster.connect(configuration=api.configuration()) as cluster:
        service = Injector(cluster, Issuer(ca, ISSUE_RETRY), TEMPLATE, ca.trust_bundle, mesh_name="osm")
        server = InjectorServer(create_app(service, metrics), idle_timeout=15.0)
        await server.start("127.0.0.1", 0, tls.context)
        try:
            url = f"https://127.0.0.1:{server.port}"
            pod = deployment_pod()
            status, answer = await post(url, client_tls, review(pod, namespace="osm-shop"))
            assert status == 200
            assert PROXY_UUID_LABEL in apply_and_validate(pod, patch_of(answer))["metadata"]["labels"]
            status, answer = await post(url, client_tls, review(deployment_pod(), namespace=MESH_NAMESPACE))
            assert status == 200
            assert "patch" not in answer["response"]
            assert "not monitored by mesh osm" in answer["response"]["auditAnnotations"]["sidecar-injection"]
        finally:
            await server.stop()
