"""Install: the rendered objects applied in Helm's order, the CRDs established before any
object of theirs; uninstall: the same objects deleted in reverse, keeping the CRDs (and with
them every mesh object in the cluster) and the namespace (with it the mesh's CA root) unless
asked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meshcp.install.client import Api, ApiCallError, poll
from meshcp.install.kinds import describe, kind_of, object_path

Manifest = dict[str, Any]
#: Receives one line per object, as it is done (`namespace/meshcp-system created`).
Report = Callable[[str], None]

_FIRST = ("Namespace", "CustomResourceDefinition")


class InstallError(Exception):
    """Install or uninstall stopped: which object, and why (one line)."""


def _what(document: Manifest) -> str:
    namespace = document["metadata"].get("namespace")
    return describe(document) + (f" -n {namespace}" if namespace else "")


async def _apply(api: Api, document: Manifest, report: Report) -> None:
    try:
        answer = await api.apply(object_path(document), document, _what(document))
    except ApiCallError as error:
        hint = ""
        if error.status == 404 and kind_of(document).group == "cert-manager.io":
            hint = " (is cert-manager installed? deploy/README.md, Requirements)"
        raise InstallError(f"{error}{hint}") from None
    report(f"{describe(document)} {'created' if answer.status == 201 else 'applied'}")


async def _established(api: Api, crd: Manifest) -> bool:
    answer = await api.get(object_path(crd), _what(crd))
    conditions = answer.body.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


async def install(api: Api, documents: list[Manifest], report: Report, establish_within: float) -> None:
    """Apply `documents`: the namespace and the CRDs first, then (once every CRD is
    established, within `establish_within` seconds) the rest in order."""
    first = [d for d in documents if d["kind"] in _FIRST]
    rest = [d for d in documents if d["kind"] not in _FIRST]
    for document in first:
        await _apply(api, document, report)
    deadline = asyncio.get_running_loop().time() + establish_within
    for crd in (d for d in first if d["kind"] == "CustomResourceDefinition"):
        try:
            established = await poll(lambda crd=crd: _established(api, crd), deadline)
        except ApiCallError as error:
            raise InstallError(str(error)) from None
        if not established:
            raise InstallError(f"{_what(crd)}: not established within {establish_within:g} s")
    for document in rest:
        await _apply(api, document, report)


async def uninstall(
    api: Api,
    documents: list[Manifest],
    report: Report,
    *,
    delete_crds: bool,
    delete_namespace: bool,
) -> None:
    """Delete `documents` in reverse order (the webhook before the injector it calls). CRDs
    only with `delete_crds`, the namespace only with `delete_namespace`."""
    # The webhook before anything else: pod creation in meshed namespaces must never wait
    # for an injector that is being removed (failurePolicy Fail).
    backwards = documents[::-1]
    ordered = [d for d in backwards if d["kind"] == "MutatingWebhookConfiguration"]
    ordered += [d for d in backwards if d["kind"] != "MutatingWebhookConfiguration"]
    for document in ordered:
        kind = document["kind"]
        if (kind == "CustomResourceDefinition" and not delete_crds) or (
            kind == "Namespace" and not delete_namespace
        ):
            report(f"{describe(document)} kept")
            continue
        try:
            answer = await api.delete(object_path(document), _what(document))
        except ApiCallError as error:
            raise InstallError(str(error)) from None
        report(f"{describe(document)} {'not found' if answer.status == 404 else 'deleted'}")
