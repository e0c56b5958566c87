"""Reading OSM's Retry and UpstreamTrafficSetting as OSM's docs write them, and each refusal."""

from __future__ import annotations

from typing import Any

from meshcp.model.osm_policy import (
    POLICY_API,
    ConnectionSettings,
    HttpRateLimit,
    OutlierDetection,
    Retry,
    RetryPolicy,
    RouteRateLimit,
    ServiceName,
    TcpRateLimit,
    UpstreamTrafficSetting,
)
from meshcp.model.smi import IdentitySubject
from tests.model.manifests import Invalid, Valid, manifest, meta, reading_tests


def retry(**policy: Any) -> dict[str, Any]:
    """OSM's retry demo: curl retries its calls to httpbin."""
    body = {"retryOn": "5xx", "perTryTimeout": "1s", "numRetries": 5, "retryBackoffBaseInterval": "1s"}
    body.update(policy)
    return manifest(
        POLICY_API,
        "Retry",
        spec={
            "source": {"kind": "ServiceAccount", "name": "curl", "namespace": "ns"},
            "destinations": [{"kind": "Service", "name": "httpbin", "namespace": "httpbin"}],
            "retryPolicy": body,
        },
    )


def setting(**spec: Any) -> dict[str, Any]:
    return manifest(
        POLICY_API, "UpstreamTrafficSetting", spec={"host": "httpbin.ns.svc.cluster.local", **spec}
    )


def retry_with(**spec: Any) -> dict[str, Any]:
    body = retry()
    body["spec"].update(spec)
    return body


CURL_RETRY = Retry(
    meta(),
    IdentitySubject("curl", "ns"),
    (ServiceName("httpbin", "httpbin"),),
    RetryPolicy("5xx", 1.0, 5, 1.0),
)
FULL = setting(
    connectionSettings={
        "tcp": {"maxConnections": 100, "connectTimeout": "250ms"},
        "http": {"maxRequests": 10, "maxRequestsPerConnection": 3, "maxPendingRequests": 5, "maxRetries": 2},
    },
    outlierDetection={
        "consecutive5xx": 3,
        "interval": "1s",
        "baseEjectionTime": "30s",
        "maxEjectionPercent": 50,
    },
    rateLimit={
        "local": {
            "tcp": {"connections": 10, "unit": "minute", "burst": 2},
            "http": {
                "requests": 100,
                "unit": "second",
                "burst": 10,
                "responseStatusCode": 503,
                "responseHeadersToAdd": [{"name": "x-limited", "value": "yes"}],
            },
        }
    },
    httpRoutes=[{"path": "/books/.*", "rateLimit": {"local": {"requests": 1, "unit": "hour"}}}],
)

VALID: Valid = [
    ("retry as OSM's demo", retry(), CURL_RETRY),
    (
        "retry with retryOn only, conditions trimmed",
        retry(retryOn="5xx, reset", perTryTimeout=None, numRetries=None, retryBackoffBaseInterval=None),
        Retry(
            meta(),
            IdentitySubject("curl", "ns"),
            (ServiceName("httpbin", "httpbin"),),
            RetryPolicy("5xx,reset"),
        ),
    ),
    (
        "retry namespaces default to its own",
        retry_with(
            source={"kind": "ServiceAccount", "name": "curl"},
            destinations=[{"kind": "Service", "name": "httpbin"}],
        ),
        Retry(meta(), IdentitySubject("curl", "ns"), (ServiceName("ns", "httpbin"),), CURL_RETRY.policy),
    ),
    ("setting by service name", setting(host="httpbin"), UpstreamTrafficSetting(meta(), "httpbin")),
    (
        "every setting",
        FULL,
        UpstreamTrafficSetting(
            meta(),
            "httpbin",
            ConnectionSettings(100, 0.25, 10, 3, 5, 2),
            OutlierDetection(3, 1.0, 30.0, 50),
            TcpRateLimit(10, 60, 2),
            HttpRateLimit(100, 1, 10, 503, (("x-limited", "yes"),)),
            (RouteRateLimit("/books/.*", HttpRateLimit(1, 3600)),),
        ),
    ),
]

INVALID: Invalid = [
    ("retry without source", retry_with(source=None), "spec.source: required"),
    (
        "retry from a Service",
        retry_with(source={"kind": "Service", "name": "curl"}),
        "spec.source.kind: must be one of ServiceAccount, got 'Service'",
    ),
    (
        "retry to nothing",
        retry_with(destinations=[]),
        "spec.destinations: at least one destination is required",
    ),
    (
        "retry to a ServiceAccount",
        retry_with(destinations=[{"kind": "ServiceAccount", "name": "httpbin"}]),
        "spec.destinations[0].kind: must be one of Service",
    ),
    (
        "retry to one service twice",
        retry_with(destinations=[{"kind": "Service", "name": "a"}] * 2),
        "spec.destinations[1]: ns/a is listed twice",
    ),
    ("retry without policy", retry_with(retryPolicy=None), "spec.retryPolicy: required"),
    ("retry without retryOn", retry(retryOn=None), "spec.retryPolicy.retryOn: required"),
    (
        "unknown condition",
        retry(retryOn="5xx,oops"),
        "spec.retryPolicy.retryOn: 'oops' is not a retry condition",
    ),
    (
        "negative retries",
        retry(numRetries=-1),
        "spec.retryPolicy.numRetries: must be an integer 0..4294967295",
    ),
    ("bad timeout", retry(perTryTimeout="1 s"), "spec.retryPolicy.perTryTimeout: '1 s' is not a duration"),
    (
        "zero backoff",
        retry(retryBackoffBaseInterval="0"),
        "spec.retryPolicy.retryBackoffBaseInterval: must be at least",
    ),
    ("setting without host", setting(host=None), "spec.host: required"),
    (
        "setting for another namespace",
        setting(host="httpbin.other.svc.cluster.local"),
        "spec.host: 'httpbin.other.svc.cluster.local' is not a Service of this namespace ('ns')",
    ),
    ("setting for a bad name", setting(host="Httpbin"), "spec.host: must be a DNS-1035 label"),
    (
        "connections not a number",
        setting(connectionSettings={"tcp": {"maxConnections": "10"}}),
        "spec.connectionSettings.tcp.maxConnections: must be an integer",
    ),
    (
        "percent over 100",
        setting(outlierDetection={"maxEjectionPercent": 101}),
        "spec.outlierDetection.maxEjectionPercent: must be a percentage 0..100, got 101",
    ),
    (
        "unit of a day",
        setting(rateLimit={"local": {"tcp": {"connections": 1, "unit": "day"}}}),
        "spec.rateLimit.local.tcp.unit: must be one of second, minute, hour, got 'day'",
    ),
    (
        "rate of zero",
        setting(rateLimit={"local": {"http": {"requests": 0, "unit": "second"}}}),
        "spec.rateLimit.local.http.requests: must be at least 1, got 0",
    ),
    (
        "status 200",
        setting(rateLimit={"local": {"http": {"requests": 1, "unit": "second", "responseStatusCode": 200}}}),
        "spec.rateLimit.local.http.responseStatusCode: must be an HTTP error status 400..599, got 200",
    ),
    (
        "status Envoy does not know",
        setting(rateLimit={"local": {"http": {"requests": 1, "unit": "second", "responseStatusCode": 499}}}),
        "responseStatusCode: 499 is not a status Envoy can send (it knows 400-417, 421-424, 426",
    ),
    (
        "header without name",
        setting(
            rateLimit={
                "local": {"http": {"requests": 1, "unit": "second", "responseHeadersToAdd": [{"value": "v"}]}}
            }
        ),
        "spec.rateLimit.local.http.responseHeadersToAdd[0].name: required",
    ),
    (
        "global rate limit",
        setting(rateLimit={"global": {"tcp": {}}}),
        "spec.rateLimit.global: global rate limiting is not supported",
    ),
    (
        "route path not RE2",
        setting(httpRoutes=[{"path": "/(?=x)", "rateLimit": {"local": {"requests": 1, "unit": "second"}}}]),
        "spec.httpRoutes[0].path:",
    ),
    (
        "route without a limit",
        setting(httpRoutes=[{"path": "/a"}]),
        "spec.httpRoutes[0].rateLimit: a route needs rateLimit.local",
    ),
]

test_valid, test_invalid = reading_tests(VALID, INVALID)
