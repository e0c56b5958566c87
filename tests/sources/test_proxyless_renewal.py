"""When the controller rewrites a proxyless pod's Secret (`renewal_reason`, a pure function),
and reading such a Secret as the injector writes it (`ProxylessSecret.read`). The renewer
against the real API server, with `meshcp serve`, is tests/kube/test_proxyless_renewal.py."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from meshcp.certs import InternalCA, MemoryStore
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.certs.provider import IssuedCertificate
from meshcp.certs.rotation import RenewalPolicy
from meshcp.cli.options import UsageError, controller_settings
from meshcp.cli.parser import build_parser
from meshcp.identity import ProxyIdentity
from meshcp.injector.bootstrap_secret import (
    PROXYLESS_FILES,
    BootstrapRenderer,
    bootstrap_secret,
    proxyless_secret,
)
from meshcp.sources.proxyless_renewal import (
    ISSUED_AT,
    ProxylessSecret,
    renew_at,
    renewal_reason,
    renewed_files,
)
from tests.injector.injection import TEMPLATE, candidate_for, new_proxy, with_annotations
from tests.injector.reviews import deployment_pod, review

START = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = RenewalPolicy()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def as_object(secret: dict[str, Any]) -> Any:
    """The attributes `ProxylessSecret.read` uses, as kubernetes_asyncio's V1Secret has them."""
    metadata = secret["metadata"]
    return SimpleNamespace(
        metadata=SimpleNamespace(
            namespace=metadata["namespace"],
            name=metadata["name"],
            resource_version="7",
            labels=metadata.get("labels"),
            annotations=metadata.get("annotations"),
        ),
        data=secret["data"],
    )


async def injected(
    ca: InternalCA, *, validity: timedelta = timedelta(hours=24)
) -> tuple[dict[str, Any], ProxyIdentity]:
    """A proxyless pod's Secret exactly as the injector makes it."""
    candidate = candidate_for(review(with_annotations(deployment_pod(), **{"meshcp.dev/proxyless": "grpc"})))
    proxy = new_proxy(candidate)
    workload = await ca.issue(workload_request(candidate.identity, validity=validity))
    xds = await ca.issue(xds_client_request(proxy))
    secret = proxyless_secret(
        candidate,
        proxy,
        TEMPLATE,
        xds_certificate=xds,
        workload_certificate=workload,
        trust_bundle=await ca.trust_bundle(),
    )
    return secret, proxy


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ca(clock: Clock) -> InternalCA:
    return await InternalCA.open(MemoryStore(), clock=clock)


def signing_root(ca: InternalCA) -> Any:
    return ca.state.signing_root.certificate.subject


async def test_reads_the_injectors_secret_and_a_fresh_one_is_not_due(ca: InternalCA, clock: Clock) -> None:
    secret, proxy = await injected(ca)
    read = ProxylessSecret.read(as_object(secret), "cluster.local")
    assert read is not None
    assert read.proxy == proxy
    assert read.issued_at is None
    assert read.bundles == (await ca.trust_bundle(),) * 2
    reason = renewal_reason(
        read, bundle=await ca.trust_bundle(), signing_root=signing_root(ca), policy=POLICY, now=clock.now
    )
    assert reason is None


async def test_a_sidecars_secret_is_not_a_proxyless_one(ca: InternalCA) -> None:
    candidate = candidate_for(review(deployment_pod()))
    proxy = new_proxy(candidate)
    certificate = await ca.issue(xds_client_request(proxy))
    secret = bootstrap_secret(candidate, proxy, BootstrapRenderer(TEMPLATE), certificate, "bundle")
    assert ProxylessSecret.read(as_object(secret), "cluster.local") is None


async def test_a_secret_whose_bootstrap_names_another_proxy_is_refused_by_name(ca: InternalCA) -> None:
    secret, proxy = await injected(ca)
    other = ProxyIdentity("00000000-0000-4000-8000-000000000000", proxy.identity)
    document = {"node": {"id": other.name}}
    secret["data"]["bootstrap.json"] = base64.b64encode(json.dumps(document).encode()).decode()
    with pytest.raises(ValueError, match=f"names proxy {other.proxy_uuid}, the label {proxy.proxy_uuid}"):
        ProxylessSecret.read(as_object(secret), "cluster.local")


async def test_the_workload_certificate_is_due_past_the_policys_share_of_its_lifetime(
    ca: InternalCA, clock: Clock
) -> None:
    secret, _ = await injected(ca)
    read = ProxylessSecret.read(as_object(secret), "cluster.local")
    assert read is not None
    bundle, root = await ca.trust_bundle(), signing_root(ca)
    due_at = renew_at(read, POLICY)
    certificate = read.workload
    lifetime = certificate.not_after - certificate.not_before
    # Between 60 % and 70 % of the lifetime (renew_share 0.3, jitter 0.1).
    assert certificate.not_before + lifetime * 0.6 <= due_at <= certificate.not_before + lifetime * 0.7
    before = due_at - timedelta(seconds=1)
    assert renewal_reason(read, bundle=bundle, signing_root=root, policy=POLICY, now=before) is None
    reason = renewal_reason(read, bundle=bundle, signing_root=root, policy=POLICY, now=due_at)
    assert reason == "workload certificate due"


async def test_a_certificate_due_on_arrival_is_measured_from_when_it_was_issued(
    ca: InternalCA, clock: Clock
) -> None:
    """The CA back-dates by 5 minutes: a 60 s certificate is "due" by its own dates the
    moment it is issued; the controller's annotation says when it was."""
    secret, _ = await injected(ca, validity=timedelta(seconds=60))
    bundle, root = await ca.trust_bundle(), signing_root(ca)
    read = ProxylessSecret.read(as_object(secret), "cluster.local")
    assert read is not None
    # The injector's Secret carries no annotation: renewed at once (once).
    reason = renewal_reason(read, bundle=bundle, signing_root=root, policy=POLICY, now=clock.now)
    assert reason == "workload certificate due"
    secret["metadata"]["annotations"] = {ISSUED_AT: clock.now.isoformat()}
    read = ProxylessSecret.read(as_object(secret), "cluster.local")
    assert read is not None and read.issued_at == clock.now
    assert renewal_reason(read, bundle=bundle, signing_root=root, policy=POLICY, now=clock.now) is None
    due_at = renew_at(read, POLICY)
    assert clock.now + timedelta(seconds=36) <= due_at <= clock.now + timedelta(seconds=42)
    reason = renewal_reason(read, bundle=bundle, signing_root=root, policy=POLICY, now=due_at)
    assert reason == "workload certificate due"


async def test_a_root_rotation_rewrites_the_bundle_then_the_certificates(
    ca: InternalCA, clock: Clock
) -> None:
    secret, _ = await injected(ca)
    read = ProxylessSecret.read(as_object(secret), "cluster.local")
    assert read is not None
    await ca.rotate_root()  # trusting: both roots, the old one signs
    reason = renewal_reason(
        read, bundle=await ca.trust_bundle(), signing_root=signing_root(ca), policy=POLICY, now=clock.now
    )
    assert reason == "trust bundle changed"
    secret["data"].update(
        renewed_files(read.workload, read.xds, await ca.trust_bundle())  # the bundle followed
    )
    read = ProxylessSecret.read(as_object(secret), "cluster.local")
    assert read is not None
    assert (
        renewal_reason(
            read, bundle=await ca.trust_bundle(), signing_root=signing_root(ca), policy=POLICY, now=clock.now
        )
        is None
    )
    await ca.sign_with_new_root()  # rotating: the new root signs, same bundle
    reason = renewal_reason(
        read, bundle=await ca.trust_bundle(), signing_root=signing_root(ca), policy=POLICY, now=clock.now
    )
    assert reason == "certificate not from the signing root"
    # A provider without root rotation (no signing root known) judges by dates and bundle.
    assert (
        renewal_reason(read, bundle=await ca.trust_bundle(), signing_root=None, policy=POLICY, now=clock.now)
        is None
    )


async def test_renewed_files_are_the_six_certificate_files(ca: InternalCA) -> None:
    _, proxy = await injected(ca)
    workload = await ca.issue(workload_request(proxy.identity))
    xds = await ca.issue(xds_client_request(proxy))
    files = renewed_files(workload, xds, "BUNDLE")
    assert set(files) == set(PROXYLESS_FILES)
    decoded = {name: base64.b64decode(value).decode() for name, value in files.items()}
    assert decoded["ca.pem"] == decoded["xds-ca.pem"] == "BUNDLE"
    assert IssuedCertificate.from_pem(decoded["cert.pem"], decoded["key.pem"]).serial_number == (
        workload.serial_number
    )
    assert IssuedCertificate.from_pem(decoded["xds-cert.pem"], decoded["xds-key.pem"]).serial_number == (
        xds.serial_number
    )


def test_serve_takes_the_renewal_interval_and_refuses_one_under_a_second(tmp_path: Any) -> None:
    def settings(*extra: str) -> Any:
        args = build_parser().parse_args(
            ["serve", "--source=kubernetes", f"--state-dir={tmp_path}", "--insecure-xds", *extra]
        )
        return controller_settings(args)

    assert settings().proxyless_renewal.interval == 60.0
    assert settings("--proxyless-renew-interval=5").proxyless_renewal.interval == 5.0
    with pytest.raises(UsageError, match="--proxyless-renew-interval must be at least 1 second"):
        settings("--proxyless-renew-interval=0.5")
