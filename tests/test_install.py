"""`meshcp install`'s manifests without a cluster: the packaged render is the chart's default
render, each value `--set` takes changes it exactly as `helm template --set` of the same value
does (the real helm, scripts/build-helm), every kind of every render has a known REST path,
and bad values are usage errors. tests/kube/test_install.py runs the commands against a real
API server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from meshcp.install import kinds
from meshcp.install.manifests import VALUES, Setting, ValuesError, default_manifests, render
from tests.support.helm import template

#: The real helm (scripts/build-helm): run after the builds by scripts/test.
pytestmark = pytest.mark.built

#: A value for each key `install --set` takes, unlike its default.
SAMPLES = {
    "meshName": "shop",
    "trustDomain": "example.org",
    "permissive": "true",
    "egress": "true",
    "certValidity": "90m",
    "image.repository": "registry.example/mesh/meshcp",
    "image.tag": "0.2.0-rc1",
    "controller.replicas": "3",
    "injector.replicas": "5",
}


def test_every_value_install_takes_has_a_sample() -> None:
    assert SAMPLES.keys() == VALUES.keys()


def test_the_packaged_manifests_are_the_charts_default_render() -> None:
    assert default_manifests() == template()


@pytest.mark.parametrize("key", SAMPLES)
def test_a_value_changes_what_helm_changes(key: str) -> None:
    ours = render([Setting(key, SAMPLES[key])])
    assert ours != default_manifests()
    assert ours == template(f"{key}={SAMPLES[key]}")


def test_another_namespace_moves_what_helm_moves() -> None:
    ours = render([], namespace="mesh-other")
    assert ours == template(namespace="mesh-other")
    assert "meshcp-system" not in json.dumps(ours)


def test_another_namespace_with_values_is_what_helm_renders() -> None:
    settings = [Setting(key, value) for key, value in SAMPLES.items()]
    helms = template(*(f"{key}={value}" for key, value in SAMPLES.items()), namespace="meshcp")
    assert render(settings, namespace="meshcp") == helms


def test_values_together_change_what_helm_changes() -> None:
    settings = [Setting(key, value) for key, value in SAMPLES.items()]
    assert render(settings) == template(*(f"{key}={value}" for key, value in SAMPLES.items()))


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("controller.autoscaling.enabled=true", "injector.autoscaling.enabled=true"),
        ("certificateProvider.kind=cert-manager", "certificateProvider.certManager.issuer=ca"),
    ],
)
def test_every_rendered_kind_has_a_path(sets: tuple[str, ...]) -> None:
    for document in template(*sets):
        path = kinds.object_path(document)
        assert path.endswith("/" + document["metadata"]["name"])
        kind = kinds.kind_of(document)
        assert kind.namespaced == ("namespace" in document["metadata"])
        assert path.startswith(f"/apis/{kind.api_version}/" if "/" in kind.api_version else "/api/v1/")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("replicas=2", "--set replicas: install takes meshName"),
        ("meshName", "--set meshName: expected KEY=VALUE"),
        ("permissive=yes", "--set permissive=yes: must be true or false"),
        ("injector.replicas=0", "--set injector.replicas=0: must be a whole number of at least 1"),
        ("certValidity=1 day", "--set certValidity=1 day: must be a duration"),
        ("meshName=Shop", "--set meshName=Shop: must be a DNS label"),
    ],
)
def test_a_bad_value_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ValuesError, match="^" + message.replace("(", r"\(")):
        render([Setting.parse(text)])


def test_a_bad_namespace_is_refused_by_name() -> None:
    with pytest.raises(ValuesError, match=r"^namespace 'Mesh_1': must be a DNS label"):
        render([], namespace="Mesh_1")


def _meshcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshcp.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dry_run_prints_the_manifests_it_would_apply() -> None:
    result = _meshcp("install", "--dry-run", "--set", "controller.replicas=2", "-o", "yaml")
    assert result.returncode == 0, result.stderr
    printed = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert printed == render([Setting("controller.replicas", "2")])
    as_json = _meshcp("install", "--dry-run", "-o", "json")
    assert yaml.safe_load(as_json.stdout) == default_manifests()


def test_a_bad_set_is_a_one_line_usage_error() -> None:
    result = _meshcp("install", "--dry-run", "--set", "image=meshcp:1")
    assert result.returncode == 2
    assert result.stderr.startswith("meshcp: error: --set image: install takes ")
    assert len(result.stderr.splitlines()) == 1
