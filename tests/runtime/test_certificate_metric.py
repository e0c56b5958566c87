"""The controller exports when each identity's current workload certificate was installed."""

from __future__ import annotations

import time

from meshcp.certs import pem
from meshcp.identity import Identity
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Settings

GAUGE = "meshcp_workload_certificate_installed_timestamp_seconds"
WEB, DB = Identity("shop", "web"), Identity("shop", "db")


def installed(runtime: ControllerRuntime, identity: Identity) -> float | None:
    return runtime.metrics.registry.get_sample_value(GAUGE, {"identity": str(identity)})


async def test_gauge_follows_first_issuance_renewal_and_forgetting() -> None:
    runtime = await ControllerRuntime.open(Settings())
    assert installed(runtime, WEB) is None
    before = time.time()
    await runtime.certificates.get(WEB)
    first = installed(runtime, WEB)
    assert first is not None and before <= first <= time.time()

    await runtime.certificates.renew_all()  # a renewal goes through on_rotated
    renewed = installed(runtime, WEB)
    assert renewed is not None and renewed >= first
    assert b'identity="shop/web"' in runtime.metrics.exposition()

    runtime.certificates.forget(WEB)
    await runtime.certificates.get(DB)  # the next installation drops forgotten identities
    assert installed(runtime, WEB) is None
    assert installed(runtime, DB) is not None


async def test_issuances_and_the_soonest_expiries_are_exported() -> None:
    runtime = await ControllerRuntime.open(Settings())
    value = runtime.metrics.registry.get_sample_value
    provider = {"provider": runtime.provider.name}
    assert value("meshcp_certificates_issued_total", provider) is None
    assert value("meshcp_workload_certificate_expiry_timestamp_seconds") is None  # none held yet
    web = await runtime.certificates.get(WEB)
    db = await runtime.certificates.get(DB)
    assert value("meshcp_certificates_issued_total", provider) == 2
    assert value("meshcp_certificate_issue_duration_seconds_count", provider) == 2
    assert value("meshcp_certificate_issue_failures_total", provider) == 0  # from the first answer
    soonest = min(web.not_after, db.not_after).timestamp()
    assert value("meshcp_workload_certificate_expiry_timestamp_seconds") == soonest

    await runtime.trust.refresh()
    roots = pem.load_certificates(runtime.trust.bundle)
    expiry = min(root.not_valid_after_utc for root in roots).timestamp()
    assert value("meshcp_ca_root_expiry_timestamp_seconds") == expiry
    await runtime.close()
