"""Reading a lab's manifests: every YAML/JSON document under a directory, where it came from.

The lab needs the raw objects (the Pod specs with their commands, which the mesh model
drops), so it reads the files itself; what `meshcp serve` later reads is the lab's own
rendering of them. Deployments become their pods here, as the ReplicaSet controller would
make them, named `<deployment>-<index>` so that `lab exec` targets are predictable.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshcp.injector import fields

SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(Exception):
    """The directory cannot be read at all (missing, not a directory)."""


@dataclass(frozen=True)
class Manifest:
    """One object and where it came from."""

    body: Mapping[str, Any]
    #: `file:line`, for messages.
    location: str
    #: Its file.
    path: Path

    @property
    def directory(self) -> Path:
        """Containers' default working directory: their manifest's."""
        return self.path.parent

    @property
    def kind(self) -> str:
        kind = self.body.get("kind")
        return kind if isinstance(kind, str) else ""

    @property
    def namespace(self) -> str:
        value = fields.mapping(self.body.get("metadata")).get("namespace")
        return value if isinstance(value, str) and value else "default"

    @property
    def name(self) -> str:
        value = fields.mapping(self.body.get("metadata")).get("name")
        return value if isinstance(value, str) else ""

    @property
    def display(self) -> str:
        return f"{self.kind or 'object'} {self.namespace}/{self.name or '?'} ({self.location})"


def read_directory(directory: Path) -> tuple[list[Manifest], dict[Path, str]]:
    """Every object under `directory` (recursively, files in name order), and by file the
    problem of each file that could not be read (`file:line: reason`): those files are
    skipped whole, so that the caller can keep their last good objects."""
    if not directory.is_dir():
        raise ManifestError(f"{directory} is not a directory of manifests")
    manifests: list[Manifest] = []
    problems: dict[Path, str] = {}
    for path in sorted(p for p in directory.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
        shown = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            problems[path] = f"{shown}: cannot read: {error}"
            continue
        try:
            found = list(_documents(text, shown, json_file=path.suffix == ".json"))
        except _FileProblem as problem:
            problems[path] = str(problem)
            continue
        wrong = [(body, line) for body, line in found if not isinstance(body, dict)]
        if wrong:
            body, line = wrong[0]
            problems[path] = f"{shown}:{line}: a manifest must be a mapping, got {type(body).__name__}"
            continue
        manifests += [Manifest(body, f"{shown}:{line}", path) for body, line in found]
    return manifests, problems


class _FileProblem(Exception):
    pass


def _documents(text: str, shown: str, *, json_file: bool) -> Iterator[tuple[Any, int]]:
    if json_file:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise _FileProblem(f"{shown}: not valid JSON: {error}") from None
        yield from _expand_list(data, 1)
        return
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as error:
        raise _FileProblem(f"{shown}: not valid YAML: {_yaml_reason(error)}") from None
    for node in nodes:
        if node is None:
            continue
        line = node.start_mark.line + 1
        try:
            data = yaml.safe_load(yaml.serialize(node))
        except yaml.YAMLError as error:
            raise _FileProblem(f"{shown}:{line}: not valid YAML: {_yaml_reason(error)}") from None
        yield from _expand_list(data, line)


def _yaml_reason(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        return f"line {error.problem_mark.line + 1}: {error.problem}"
    return str(error)


def _expand_list(data: Any, line: int) -> Iterator[tuple[Any, int]]:
    if isinstance(data, dict) and data.get("kind") == "List" and isinstance(data.get("items"), list):
        for item in data["items"]:
            yield item, line
    elif data is not None:
        yield data, line


def expand_deployments(manifests: list[Manifest]) -> tuple[list[Manifest], list[str]]:
    """Deployments (apps/v1) replaced by their pods; other objects unchanged.

    The pods carry the template's labels and annotations and the Deployment's namespace;
    `spec.replicas` defaults to 1, as in Kubernetes.
    """
    out: list[Manifest] = []
    problems: list[str] = []
    for manifest in manifests:
        if manifest.kind != "Deployment":
            out.append(manifest)
            continue
        spec = fields.mapping(manifest.body.get("spec"))
        replicas = spec.get("replicas", 1)
        template = fields.mapping(spec.get("template"))
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            problems.append(f"{manifest.display}: spec.replicas must be a whole number ≥ 0, got {replicas!r}")
            continue
        if not manifest.name or not isinstance(template.get("spec"), dict):
            problems.append(f"{manifest.display}: needs metadata.name and spec.template.spec")
            continue
        metadata = fields.mapping(template.get("metadata"))
        for index in range(replicas):
            pod_metadata = {
                "name": f"{manifest.name}-{index}",
                "namespace": manifest.namespace,
                "labels": dict(fields.mapping(metadata.get("labels"))),
                "annotations": dict(fields.mapping(metadata.get("annotations"))),
            }
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": pod_metadata,
                "spec": copy.deepcopy(template["spec"]),
            }
            out.append(Manifest(body, manifest.location, manifest.path))
    return out, problems
