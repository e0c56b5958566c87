"""The RBAC rules of the Kubernetes clients (meshcp.sources.kubernetes_rbac): exactly what
the source watches and what each client module calls, and deploy/rbac.yaml generated
from them."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterable
from pathlib import Path

import pytest

from meshcp.sources.kubernetes import RESOURCES
from meshcp.sources.kubernetes_rbac import CLIENT_RULES, RULES, SOURCE_RULES, Rule, render


def _granted(rules: Iterable[Rule]) -> set[tuple[str, str, str]]:
    return {
        (group, plural, verb)
        for rule in rules
        for group in rule.api_groups
        for plural in rule.resources
        for verb in rule.verbs
    }


def test_rbac_rules_cover_exactly_what_the_source_watches() -> None:
    needed = {(r.group, r.plural, verb) for r in RESOURCES for verb in ("list", "watch")}
    assert _granted(SOURCE_RULES) == needed
    assert _granted(RULES) == needed | _granted(rule for rules in CLIENT_RULES.values() for rule in rules)


#: kubernetes_asyncio methods our clients call → (API group, resource, RBAC verb).
_API_CALLS = {
    "create_namespaced_event": ("", "events", "create"),
    "read_namespaced_secret": ("", "secrets", "get"),
    "create_namespaced_secret": ("", "secrets", "create"),
    "replace_namespaced_secret": ("", "secrets", "update"),
    "patch_namespaced_secret": ("", "secrets", "patch"),
    "delete_namespaced_secret": ("", "secrets", "delete"),
    "list_secret_for_all_namespaces": ("", "secrets", "list"),
    "list_pod_for_all_namespaces": ("", "pods", "list"),
    "create_namespaced_custom_object": ("cert-manager.io", "certificaterequests", "create"),
    "get_namespaced_custom_object": ("cert-manager.io", "certificaterequests", "get"),
    "delete_namespaced_custom_object": ("cert-manager.io", "certificaterequests", "delete"),
    "read_namespaced_lease": ("coordination.k8s.io", "leases", "get"),
    "create_namespaced_lease": ("coordination.k8s.io", "leases", "create"),
    "replace_namespaced_lease": ("coordination.k8s.io", "leases", "update"),
}


@pytest.mark.parametrize("module", sorted(CLIENT_RULES))
def test_rbac_rules_match_what_each_client_module_calls(module: str) -> None:
    source = Path(importlib.import_module(module).__file__ or "").read_text()
    called = {
        node.func.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    api_calls = {
        name
        for name in called
        if name.endswith(
            (
                "_namespaced_secret",
                "_namespaced_event",
                "_namespaced_lease",
                "_custom_object",
                "_for_all_namespaces",
            )
        )
    }
    assert api_calls <= _API_CALLS.keys(), f"map these calls to RBAC verbs: {api_calls - _API_CALLS.keys()}"
    assert {_API_CALLS[name] for name in api_calls} == _granted(CLIENT_RULES[module])


def test_the_charts_roles_match_the_rules() -> None:
    path = Path(__file__).parents[2] / "deploy" / "helm" / "meshcp" / "templates" / "rbac.yaml"
    assert path.read_text() == render(), (
        "regenerate: python -m meshcp.sources.kubernetes_rbac > deploy/helm/meshcp/templates/rbac.yaml"
    )
