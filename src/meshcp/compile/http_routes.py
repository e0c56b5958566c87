"""Route pieces both the mesh's routes (`rds`) and OSM Egress's inline routes (`egress`,
in the outbound listener) are made of: a match from an HTTPRouteGroup's match, and the
403 every request no route allows gets. Here so that `lds` need not import `rds`."""

from __future__ import annotations

from meshcp._proto.envoy.config.core.v3 import DataSource
from meshcp._proto.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    Route,
    RouteMatch,
    VirtualHost,
)
from meshcp._proto.envoy.type.matcher.v3 import RegexMatcher
from meshcp.compile.rbac import header, method_regex, path_regex
from meshcp.model.smi import HTTPMatch


def route_match(match: HTTPMatch | None) -> RouteMatch:
    if match is None:
        return RouteMatch(prefix="/")
    headers: list[HeaderMatcher] = []
    if methods := method_regex(match):
        headers.append(header(":method", methods))
    headers += [header(name, value) for name, value in sorted((match.headers or {}).items())]
    if regex := path_regex(match):
        return RouteMatch(safe_regex=RegexMatcher(regex=regex), headers=headers)
    return RouteMatch(prefix="/", headers=headers)


def denied_virtual_host() -> VirtualHost:
    """Every host no other virtual host names: the services pruned from this class, or the
    hosts no Egress allows. The answer is the one the destination's RBAC filter would give."""
    return VirtualHost(
        name="denied",
        domains=["*"],
        routes=[
            Route(
                match=RouteMatch(prefix="/"),
                direct_response=DirectResponseAction(
                    status=403, body=DataSource(inline_string="RBAC: access denied")
                ),
            )
        ],
    )
