"""Envoy's regex size limit, measured as Envoy measures it: a real Envoy NACKs a route whose
regex compiles to an RE2 program over 100, and meshcp refuses that HTTPRouteGroup when it
reads it (a problem naming the object and the field) instead of sending it.

The routes are compiled by `compile.http_routes.route_match` from an `HTTPMatch` made directly, as
a model that skipped the check would hold it, and pushed to Envoy over ADS.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from meshcp._proto.envoy.config.route.v3 import Route, RouteAction, RouteConfiguration, VirtualHost
from meshcp.cache import Encoder, resource_types
from meshcp.compile.http_routes import route_match
from meshcp.model.parse import InvalidObject, parse_object
from meshcp.model.regex import ENVOY_MAX_PROGRAM_SIZE, envoy_regex, program_size
from meshcp.model.smi import HTTPMatch
from meshcp.runtime.controller import ControllerRuntime
from tests.support import eventually
from tests.support.ads import LISTENER, ROUTE, serving, type_status
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.resources import eds_cluster, http_listener, load_assignment, snapshot

pytestmark = REAL_ENVOY

NODE = "envoy-regex"
#: Two path patterns on either side of Envoy's limit, sent as `(?:...).*`. Their size
#: counted in UTF-8 would be 112 and 113: Envoy counts as `model.regex.program_size` does.
AT_THE_LIMIT = "/shop/[^/]+/items/[0-9a-f]{39}"
OVER_THE_LIMIT = AT_THE_LIMIT + "/"


def _routes(path_regex: str) -> RouteConfiguration:
    match = HTTPMatch(name="m", path_regex=path_regex)
    route = Route(match=route_match(match), route=RouteAction(cluster="c-a"))
    return RouteConfiguration(
        name=ROUTE, virtual_hosts=[VirtualHost(name="all", domains=["*"], routes=[route])]
    )


def _group(path_regex: str) -> dict[str, object]:
    return {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "big-routes", "namespace": "shop"},
        "spec": {"matches": [{"name": "m", "pathRegex": path_regex}]},
    }


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    async with serving() as started:
        yield started


def test_the_two_patterns_straddle_envoys_limit() -> None:
    assert program_size(envoy_regex(AT_THE_LIMIT, prefix=True)) == ENVOY_MAX_PROGRAM_SIZE
    assert program_size(envoy_regex(OVER_THE_LIMIT, prefix=True)) == ENVOY_MAX_PROGRAM_SIZE + 1


async def test_envoy_nacks_the_regex_meshcp_refuses_and_accepts_the_one_it_keeps(
    runtime: ControllerRuntime,
) -> None:
    encoder = Encoder()
    base = (eds_cluster("c-a"), load_assignment("c-a", 9), http_listener(LISTENER, 0, ROUTE))
    kept = snapshot(encoder, *base, _routes(AT_THE_LIMIT))
    async with EnvoyProcess(ads_bootstrap(NODE, runtime.xds.port, False)) as envoy:
        runtime.cache.set_snapshot(NODE, kept)

        async def acked() -> bool:
            return type_status(runtime, NODE, "rds").get("version_acked") == kept.version(
                resource_types.ROUTE
            )

        await eventually(acked, 15, "Envoy's ACK of the route at the limit", envoy.log_tail)

        refused = snapshot(encoder, *base, _routes(OVER_THE_LIMIT))
        runtime.cache.set_snapshot(NODE, refused)

        async def nacked() -> bool:
            return type_status(runtime, NODE, "rds").get("last_nack") is not None

        await eventually(nacked, 15, "Envoy's NACK of the route over the limit", envoy.log_tail)
        nack = type_status(runtime, NODE, "rds")["last_nack"]
        assert nack["version"] == refused.version(resource_types.ROUTE)
        assert re.search(r"program size of 101 > max program size of 100", nack["message"]), nack

    # What meshcp does with the same patterns written in an HTTPRouteGroup.
    assert parse_object(_group(AT_THE_LIMIT))
    with pytest.raises(InvalidObject) as refused_group:
        parse_object(_group(OVER_THE_LIMIT))
    assert str(refused_group.value) == (
        "HTTPRouteGroup shop/big-routes: spec.matches[0].pathRegex: regular expression "
        "'/shop/[^/]+/items/[0-9a-f]{39}/' is too "
        "large for Envoy: its RE2 program size is 101 as a prefix, over Envoy's limit of 100 "
        "(re2.max_program_size.error_level); every proxy would refuse it"
    )


#: Patterns whose program sizes differ between RE2's encodings (`.`, `[^/]`, `\pL`, `\w`,
#: non-ASCII text, case folding), each over the limit so that Envoy's NACK states its size.
MEASURED = (
    "/a{900}",
    "/books/[0-9]+/x{100}",
    "(.*a){20}",
    r"\pL{60}",
    "(a|b|c|d){40}",
    ".{100}",
    "(?i)abc{100}",
    "[^/]{50}",
    "(?:é){100}",
    "[éü]{60}",
    r"\w{50}\s{30}",
)


async def test_envoy_states_the_program_size_meshcp_measures(runtime: ControllerRuntime) -> None:
    encoder = Encoder()
    base = (eds_cluster("c-a"), load_assignment("c-a", 9), http_listener(LISTENER, 0, ROUTE))
    stated: dict[str, int] = {}
    async with EnvoyProcess(ads_bootstrap(NODE, runtime.xds.port, False)) as envoy:
        for pattern in MEASURED:
            sent = snapshot(encoder, *base, _routes(pattern))
            runtime.cache.set_snapshot(NODE, sent)
            version = sent.version(resource_types.ROUTE)

            async def nacked(version: str = version) -> bool:
                nack = type_status(runtime, NODE, "rds").get("last_nack")
                return nack is not None and nack["version"] == version

            await eventually(nacked, 15, f"Envoy's NACK of {pattern!r}", envoy.log_tail)
            message = type_status(runtime, NODE, "rds")["last_nack"]["message"]
            found = re.search(r"RE2 program size of (\d+) > max program size of 100", message)
            assert found is not None, message
            stated[pattern] = int(found.group(1))
    assert stated == {pattern: program_size(envoy_regex(pattern, prefix=True)) for pattern in MEASURED}
