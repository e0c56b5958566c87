"""RBAC policies from the policy's rules: who may call, with which requests.

Shared by the inbound routes (HTTP, per route) and listeners (TCP, network filter).
"""

from __future__ import annotations

from collections.abc import Iterable

from meshcp._proto.envoy.config.rbac.v3 import (
    Permission,
    PermissionSet,
    Policy,
    Principal,
    PrincipalAuthenticated,
    Rbac,
    RbacAction,
)
from meshcp._proto.envoy.config.route.v3 import HeaderMatcher
from meshcp._proto.envoy.type.matcher.v3 import PathMatcher, RegexMatcher, StringMatcher
from meshcp.compile.common import principals
from meshcp.identity import Identity
from meshcp.model.regex import envoy_regex
from meshcp.model.smi import HTTPMatch
from meshcp.policy.types import HttpRule


def path_regex(match: HTTPMatch) -> str:
    """SMI's pathRegex is anchored at the start only: a prefix, in regex form."""
    return envoy_regex(match.path_regex, prefix=True)


def method_regex(match: HTTPMatch) -> str:
    """ "" when any method is allowed (none given, or "*")."""
    methods = sorted(set(match.methods))
    if not methods or "*" in methods:
        return ""
    return "|".join(methods)


def header(name: str, regex: str) -> HeaderMatcher:
    """A header whose value matches `regex` in full (Envoy's safe_regex semantics)."""
    return HeaderMatcher(name=name, string_match=StringMatcher(safe_regex=RegexMatcher(regex=regex)))


def permission(match: HTTPMatch | None) -> Permission:
    """The requests an HTTP match describes, as an RBAC permission."""
    if match is None:
        return Permission(any=True)
    rules: list[Permission] = []
    if regex := path_regex(match):
        rules.append(
            Permission(url_path=PathMatcher(path=StringMatcher(safe_regex=RegexMatcher(regex=regex))))
        )
    if methods := method_regex(match):
        rules.append(Permission(header=header(":method", methods)))
    for name, value in sorted((match.headers or {}).items()):
        rules.append(Permission(header=header(name, value)))
    if not rules:
        return Permission(any=True)
    return rules[0] if len(rules) == 1 else Permission(and_rules=PermissionSet(rules=rules))


def _principals(sources: Iterable[Identity], any_source: bool, trust_domain: str) -> list[Principal]:
    if any_source:
        return [Principal(authenticated=PrincipalAuthenticated())]  # any mesh identity (mTLS)
    return principals(sources, trust_domain)


def http_rbac(rules: Iterable[HttpRule], trust_domain: str) -> Rbac:
    """ALLOW policies, one per rule; a request no policy allows is denied (403)."""
    policies = {}
    for index, rule in enumerate(rules):
        granted = _principals(rule.sources, rule.any_source, trust_domain)
        if granted:
            name = f"{index:03d}-{rule.match.name if rule.match else 'all'}"
            policies[name] = Policy(permissions=[permission(rule.match)], principals=granted)
    return Rbac(action=RbacAction.ALLOW, policies=policies)


def tcp_rbac(sources: Iterable[Identity], any_source: bool, trust_domain: str) -> Rbac:
    """Who may open a connection; others are reset."""
    granted = _principals(sources, any_source, trust_domain)
    policies = (
        {"allowed-sources": Policy(permissions=[Permission(any=True)], principals=granted)} if granted else {}
    )
    return Rbac(action=RbacAction.ALLOW, policies=policies)
