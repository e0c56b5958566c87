"""Local rate limits (UpstreamTrafficSetting `rateLimit.local`, `httpRoutes`): Envoy token buckets.

Shared by LDS (the filters in the inbound chains) and RDS (the per-virtual-host and
per-route limits). Each limit is a token bucket of `count + burst` tokens refilled with
`count` tokens every `unit`: a burst is spent once and then earned back at the rate.
The HTTP filter in the connection manager carries no bucket itself (it then lets every
request through); the limits sit on the virtual host and the routes that have them, the
most specific one deciding, as Envoy resolves per-filter configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from meshcp._proto.envoy.config.core.v3 import HeaderValue, HeaderValueOption, RuntimeFractionalPercent
from meshcp._proto.envoy.config.route.v3 import Route, RouteAction, RouteMatch
from meshcp._proto.envoy.extensions.filters.http.local_ratelimit.v3 import (
    LocalRateLimit as HttpLocalRateLimit,
)
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from meshcp._proto.envoy.extensions.filters.network.local_ratelimit.v3 import (
    LocalRateLimit as NetworkLocalRateLimit,
)
from meshcp._proto.envoy.type.matcher.v3 import RegexMatcher
from meshcp._proto.envoy.type.v3 import (
    FractionalPercent,
    FractionalPercentDenominatorType,
    HttpStatus,
    StatusCode,
    TokenBucket,
)
from meshcp.cache.encoding import pack
from meshcp.model.osm_policy import HttpRateLimit, TcpRateLimit
from meshcp.policy.types import InboundPort

HTTP_LOCAL_RATE_LIMIT = "envoy.filters.http.local_ratelimit"
NETWORK_LOCAL_RATE_LIMIT = "envoy.filters.network.local_ratelimit"


def bucket(count: int, unit: int, burst: int) -> TokenBucket:
    return TokenBucket(max_tokens=count + burst, tokens_per_fill=count, fill_interval=timedelta(seconds=unit))


def network_limit(stat_prefix: str, limit: TcpRateLimit) -> NetworkLocalRateLimit:
    """Connections over the limit are closed as soon as they are accepted."""
    return NetworkLocalRateLimit(
        stat_prefix=stat_prefix, token_bucket=bucket(limit.connections, limit.unit, limit.burst)
    )


def http_limit(stat_prefix: str, limit: HttpRateLimit) -> HttpLocalRateLimit:
    """Requests over the limit get `limit.status` and `limit.headers` (enabled and
    enforced for every request: Envoy's default for both is none)."""
    return HttpLocalRateLimit(
        stat_prefix=stat_prefix,
        status=HttpStatus(code=StatusCode(limit.status)),
        token_bucket=bucket(limit.requests, limit.unit, limit.burst),
        filter_enabled=_always(),
        filter_enforced=_always(),
        response_headers_to_add=[
            HeaderValueOption(header=HeaderValue(key=name, value=value)) for name, value in limit.headers
        ],
    )


def http_filter(stat_prefix: str) -> HttpFilter:
    """The connection manager's filter: no bucket of its own, the routes' decide."""
    return HttpFilter(
        name=HTTP_LOCAL_RATE_LIMIT, typed_config=pack(HttpLocalRateLimit(stat_prefix=stat_prefix))
    )


def limited_routes(
    port: InboundPort, action: RouteAction, stat_prefix: str, per_route: Mapping[str, Any]
) -> list[Route]:
    """The routes of a virtual host to the application: one per `httpRoutes` path (an RE2
    regex matching the whole path) with its own limit, then the catch-all; every one goes
    to `action` and carries `per_route` (the inbound RBAC) besides its limit."""
    limits = port.rate_limits
    routes = [
        Route(
            match=RouteMatch(safe_regex=RegexMatcher(regex=route.path)),
            route=action,
            typed_per_filter_config={
                **per_route,
                HTTP_LOCAL_RATE_LIMIT: pack(http_limit(f"{stat_prefix}.route.{index}", route.limit)),
            },
        )
        for index, route in enumerate(limits.routes if limits is not None else ())
    ]
    routes.append(Route(match=RouteMatch(prefix="/"), route=action, typed_per_filter_config=dict(per_route)))
    return routes


def host_limit(port: InboundPort, stat_prefix: str) -> dict[str, Any]:
    """The virtual host's own limit (the service's `rateLimit.local.http`), if it has one."""
    limit = port.rate_limits.http if port.rate_limits is not None else None
    return {HTTP_LOCAL_RATE_LIMIT: pack(http_limit(stat_prefix, limit))} if limit else {}


def limits_requests(port: InboundPort) -> bool:
    """Whether a port's HTTP connection manager needs the rate limit filter."""
    limits = port.rate_limits
    return port.is_http and limits is not None and (limits.http is not None or bool(limits.routes))


def _always() -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(
        default_value=FractionalPercent(numerator=100, denominator=FractionalPercentDenominatorType.HUNDRED)
    )
