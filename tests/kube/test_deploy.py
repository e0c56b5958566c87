"""deploy/ installs into a real API server: `kubectl apply -f deploy/` as deploy/README.md
says, every object accepted by server-side validation (strict: an unknown field is an error)
and stored as written; applying again changes nothing."""

from __future__ import annotations

import json

from tests.kube.conftest import Installed
from tests.support.deploy import DEPLOY, DOCUMENTS, _namespace

#: Deleted again by the `installed` fixture (see why there).
DELETED_AFTER_INSTALL = {
    ("MutatingWebhookConfiguration", "meshcp-injector"),
    ("APIService", "v1alpha1.metrics.smi-spec.io"),
}


def test_kubectl_apply_creates_every_object(installed: Installed) -> None:
    created = [line for line in installed.output.splitlines() if line.endswith(" created")]
    # namespace.yaml and meshconfig-crd.yaml were applied first, so they are "unchanged" here.
    assert len(created) == len(DOCUMENTS) - 2, installed.output


def _differences(written: object, stored: object, path: str = "") -> list[str]:
    """Where `stored` lacks or changed what `written` says (fields the server added, by
    defaulting, are no difference)."""
    if isinstance(written, dict) and isinstance(stored, dict):
        return [
            d for key, value in written.items() for d in _differences(value, stored.get(key), f"{path}.{key}")
        ]
    if isinstance(written, list) and isinstance(stored, list) and len(written) == len(stored):
        return [
            d
            for i, (w, s) in enumerate(zip(written, stored, strict=True))
            for d in _differences(w, s, f"{path}[{i}]")
        ]
    return [] if written == stored else [f"{path}: wrote {written!r}, stored {stored!r}"]


def test_every_object_is_stored_as_written(installed: Installed) -> None:
    stored = installed.api.get("-f", str(DEPLOY), "--ignore-not-found")["items"]
    by_key = {(obj["kind"], _namespace(obj), obj["metadata"]["name"]): obj for obj in stored}
    written = {
        (doc["kind"], _namespace(doc), doc["metadata"]["name"]): doc
        for _, doc in DOCUMENTS
        if (doc["kind"], doc["metadata"]["name"]) not in DELETED_AFTER_INSTALL
    }
    assert set(by_key) == set(written)
    differences = {key: _differences(doc, by_key[key]) for key, doc in written.items()}
    assert {key: found for key, found in differences.items() if found} == {}


def test_applying_again_changes_nothing(installed: Installed) -> None:
    output = installed.api.kubectl("apply", "-f", str(DEPLOY), "--dry-run=server").stdout
    changed = [
        line
        for line in output.splitlines()
        if not line.endswith("unchanged (server dry run)")
        and not any(
            line.startswith(f"{kind.lower()}.") and f"/{name} " in line
            for kind, name in DELETED_AFTER_INSTALL
        )
        # kubectl's client-side apply always sends a PodDisruptionBudget's selector (its patch
        # strategy is `replace`) and so says "configured"; `kubectl diff` below shows that the
        # server would change nothing.
        and not line.startswith("poddisruptionbudget.policy/")
    ]
    assert changed == []
    budgets = [doc for _, doc in DOCUMENTS if doc["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 2
    diff = installed.api.kubectl(
        "diff",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": budgets}),
        check=False,
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_the_meshconfig_crd_schema_rejects_an_unknown_field(installed: Installed) -> None:
    meshconfig = next(doc for _, doc in DOCUMENTS if doc["kind"] == "MeshConfig")
    bad = {**meshconfig, "spec": {**meshconfig["spec"], "sidecarr": {}}}
    result = installed.api.kubectl("apply", "-f", "-", "--dry-run=server", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.sidecarr"' in result.stderr


def test_the_smi_crd_schemas_reject_what_is_not_smi(installed: Installed) -> None:
    split = {
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": "most"}]},
    }
    dry_run = ("apply", "-f", "-", "--dry-run=server")
    result = installed.api.kubectl(*dry_run, input=json.dumps(split), check=False)
    assert result.returncode != 0
    assert "spec.backends[0].weight" in result.stderr, result.stderr
    target = {
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {
            "destination": {"kind": "Group", "name": "web"},
            "sources": [{"kind": "ServiceAccount", "name": "client"}],
            "rules": [{"kind": "HTTPRouteGroup", "name": "routes"}],
        },
    }
    result = installed.api.kubectl(*dry_run, input=json.dumps(target), check=False)
    assert result.returncode != 0
    assert "spec.destination.kind" in result.stderr, result.stderr
