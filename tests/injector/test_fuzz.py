"""Property-based fuzzing of the webhook: whatever the body, never a 5xx, never a crash, and
every 200 is a well-formed AdmissionReview for the request's uid whose patch applies."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonpatch
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from meshcp.certs import InternalCA, Issuer
from meshcp.injector.admission import ISSUE_RETRY, Injector
from meshcp.injector.app import MUTATE_PATH, create_app
from meshcp.injector.kube import KubeCluster
from meshcp.injector.metrics import InjectorMetrics
from meshcp.injector.review import ADMISSION_VERSIONS
from meshcp.policy.membership import INJECTION_ANNOTATION, PROXY_UUID_LABEL
from meshcp.sidecar import iptables
from tests.injector.conftest import TEMPLATE, FakeApi
from tests.injector.reviews import MESH_NAMESPACE, PLAIN_NAMESPACE, bare_pod, deployment_pod, review

JsonValue = Any
NAME = r"[a-z][a-z0-9-]{0,10}"
#: A valid service account too long to fit in a sidecar name.
LONG_NAME = ".".join(["a" * 50] * 4)

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


def mostly(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`strategy` nine times in ten, any JSON value otherwise."""
    return st.integers(0, 9).flatmap(lambda n: json_values if n == 5 else strategy)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose fields may be missing, and may hold the wrong type."""
    return st.fixed_dictionaries({}, optional={key: mostly(value) for key, value in fields.items()})


def usual(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose fields are there, and may hold the wrong type."""
    return st.fixed_dictionaries({key: mostly(value) for key, value in fields.items()})


namespaces = st.sampled_from([MESH_NAMESPACE, MESH_NAMESPACE, PLAIN_NAMESPACE, "", "kube-system", "nowhere"])
ports = st.one_of(
    st.integers(-5, 70_000), st.sampled_from(["http", "admin", "8080", "", "0x50", "99999999999999999999"])
)
probe = optional(
    httpGet=optional(
        port=ports,
        path=st.text(max_size=12),
        host=st.sampled_from(["", "10.0.0.1"]),
        scheme=st.sampled_from(["HTTP", "HTTPS", "FTP"]),
        httpHeaders=st.lists(optional(name=st.text(max_size=5), value=st.text(max_size=5)), max_size=2),
    ),
    tcpSocket=optional(port=ports, host=st.sampled_from(["", "db"])),
    grpc=optional(port=ports),
    exec=optional(command=st.lists(st.text(max_size=5), max_size=2)),
    periodSeconds=st.integers(0, 100),
)
container = st.fixed_dictionaries(
    {
        "name": mostly(
            st.sampled_from(["app", "db", "envoy", "meshcp-init"]) | st.from_regex(NAME, fullmatch=True)
        )
    },
    optional={
        "image": st.text(max_size=10),
        "ports": mostly(
            st.lists(optional(name=st.sampled_from(["http", "admin"]), containerPort=ports), max_size=3)
        ),
        "livenessProbe": mostly(probe),
        "readinessProbe": mostly(probe),
        "startupProbe": mostly(probe),
    },
)
annotation_keys = st.sampled_from(
    [
        INJECTION_ANNOTATION,
        iptables.OUTBOUND_PORT_EXCLUSIONS,
        iptables.INBOUND_PORT_EXCLUSIONS,
        iptables.OUTBOUND_IP_EXCLUSIONS,
        iptables.OUTBOUND_IP_INCLUSIONS,
        "meshcp.dev/original-probes",
    ]
) | st.text(max_size=8)
annotation_values = st.sampled_from(
    ["enabled", "disabled", "80,443", "10.0.0.0/8, 192.168.0.1", "fd00::/8", "0", "a,,b", ""]
) | st.text(max_size=20)
metadata = optional(
    name=st.text(max_size=10),
    generateName=st.text(max_size=10),
    namespace=namespaces,
    labels=st.dictionaries(
        st.sampled_from([PROXY_UUID_LABEL, "app"]) | st.text(max_size=5), st.text(max_size=5)
    ),
    annotations=st.dictionaries(annotation_keys, annotation_values, max_size=4),
)
spec = st.fixed_dictionaries(
    {"containers": mostly(st.lists(container, min_size=1, max_size=3))},
    optional={
        "initContainers": mostly(st.lists(container, max_size=2)),
        "volumes": mostly(st.lists(json_values, max_size=2)),
        "hostNetwork": mostly(st.booleans()),
        "serviceAccountName": mostly(
            st.sampled_from(["default", "bookstore", "Bad_SA", "", LONG_NAME]) | st.text(max_size=8)
        ),
    },
)
pods = usual(metadata=metadata, spec=spec)
POD = {"group": "", "version": "v1", "kind": "Pod"}
PODS = {"group": "", "version": "v1", "resource": "pods"}


def envelope(request: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """An AdmissionReview around `request`, with a fresh uid."""
    return st.fixed_dictionaries(
        {
            "apiVersion": st.sampled_from(ADMISSION_VERSIONS),
            "kind": st.just("AdmissionReview"),
            "request": st.tuples(request, st.uuids()).map(lambda pair: {**pair[0], "uid": str(pair[1])}),
        }
    )


#: Pod creations whose pod is anything: they reach the injection decision.
pod_reviews = envelope(
    st.fixed_dictionaries(
        {
            "kind": st.just(POD),
            "resource": st.just(PODS),
            "operation": st.just("CREATE"),
            "namespace": namespaces,
            "object": pods,
            "dryRun": st.booleans(),
        }
    )
)
#: Requests of any kind, operation and subresource.
other_reviews = envelope(
    usual(
        kind=st.sampled_from([POD, {"group": "apps", "version": "v1", "kind": "Deployment"}]),
        resource=st.just(PODS),
        subResource=st.sampled_from(["", "status", "ephemeralcontainers"]),
        namespace=namespaces,
        operation=st.sampled_from(["CREATE", "UPDATE", "DELETE"]),
        object=pods,
    )
)


def _paths(value: JsonValue, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated_reviews(draw: st.DrawFn) -> dict[str, Any]:
    """A real AdmissionReview with up to three values replaced or removed anywhere in it."""
    pod = draw(st.sampled_from([deployment_pod, bare_pod]))()
    document = review(pod, uid="5d0c0f57-7a3e-4b1e-9c61-1f1b6c1e2a00", dry_run=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(document)[1:]))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return document


def dumps(value: JsonValue) -> bytes:
    return json.dumps(value).encode()


garbage = st.one_of(
    st.binary(max_size=64),
    json_values.map(dumps),
    mutated_reviews().map(dumps).flatmap(lambda body: st.integers(0, len(body)).map(lambda n: body[:n])),
)
bodies = st.one_of(
    garbage,
    other_reviews.map(dumps),
    pod_reviews.map(dumps),
    pod_reviews.map(dumps),
    mutated_reviews().map(dumps),
)


@pytest.fixture
async def client(api: FakeApi, ca: InternalCA) -> AsyncIterator[tuple[TestClient[Any, Any], InjectorMetrics]]:
    metrics = InjectorMetrics()
    async with KubeCluster.connect(configuration=api.configuration()) as cluster:
        injector = Injector(cluster, Issuer(ca, ISSUE_RETRY), TEMPLATE, ca.trust_bundle)
        async with TestClient(TestServer(create_app(injector, metrics))) as test_client:
            yield test_client, metrics


@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
async def test_any_body_gets_a_well_formed_answer(
    client: tuple[TestClient[Any, Any], InjectorMetrics], body: bytes
) -> None:
    test_client, metrics = client
    response = await test_client.post(MUTATE_PATH, data=body, headers={"Content-Type": "application/json"})
    text = await response.text()
    assert response.status in (200, 400), (response.status, text)
    if response.status == 400:
        assert text.strip()
        event("malformed")
        return
    sent = json.loads(body)
    answer = json.loads(text)
    assert answer["apiVersion"] == sent["apiVersion"]
    assert answer["kind"] == "AdmissionReview"
    result = answer["response"]
    assert result["uid"] == sent["request"]["uid"]
    assert isinstance(result["allowed"], bool)
    if not result["allowed"]:
        assert result["status"]["message"]
    note = result.get("auditAnnotations", {}).get("sidecar-injection", "denied")
    event(" ".join(note.split()[:6]))
    if "patch" in result:
        operations = json.loads(base64.b64decode(result["patch"]))
        jsonpatch.apply_patch(copy.deepcopy(sent["request"]["object"]), operations)
    # Nothing took the "internal error" path: every input was handled on purpose.
    assert metrics.count("error") == 0
