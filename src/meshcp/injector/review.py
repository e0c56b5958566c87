"""The AdmissionReview envelope: the request read from the API server's body, the answer sent back.

A body that is not an AdmissionReview raises `MalformedReview` (the server answers HTTP
400 with the reason). Answers go back in the apiVersion the request came in
(admission.k8s.io/v1 or v1beta1), carrying its uid.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshcp.injector.patch_ops import Patch

ADMISSION_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class MalformedReview(ValueError):
    """The body is not an AdmissionReview request this webhook can answer (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Review:
    """One AdmissionReview request; `request` is the raw `request` object."""

    api_version: str
    uid: str
    request: Mapping[str, Any]

    @property
    def dry_run(self) -> bool:
        """Side effects (the bootstrap Secret) must not happen: the webhook declares
        `sideEffects: NoneOnDryRun`."""
        return self.request.get("dryRun") is True


def parse_review(body: bytes) -> Review:
    """The AdmissionReview in `body`; raises `MalformedReview` saying what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise MalformedReview(f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise MalformedReview("the body must be a JSON object (an AdmissionReview)")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if api_version not in ADMISSION_VERSIONS:
        raise MalformedReview(
            f"apiVersion must be one of {', '.join(ADMISSION_VERSIONS)}, got {api_version!r}"
        )
    if kind != "AdmissionReview":
        raise MalformedReview(f"kind must be AdmissionReview, got {kind!r}")
    request = document.get("request")
    if not isinstance(request, dict):
        raise MalformedReview("request: required (an AdmissionRequest object)")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReview("request.uid: required (a non-empty string)")
    return Review(api_version, uid, request)


def allowed_response(
    review: Review, *, patch: Patch | None = None, reason: str = "", warnings: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Admit the pod, mutated by `patch` if any; `reason` goes to the audit log; `warnings`
    (and the patch's) are shown by kubectl."""
    response: dict[str, Any] = {"uid": review.uid, "allowed": True}
    if patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch.encoded()
        warnings = (*warnings, *patch.warnings)
    if warnings:
        response["warnings"] = list(warnings)
    result = "injected" if patch is not None else f"skipped: {reason}"
    response["auditAnnotations"] = {"sidecar-injection": result}
    return _review(review, response)


def denied_response(review: Review, message: str, *, code: int = 403) -> dict[str, Any]:
    """Refuse the pod; `message` is what `kubectl` (or the ReplicaSet's events) shows."""
    response = {
        "uid": review.uid,
        "allowed": False,
        "status": {
            "code": code,
            "message": message,
            "reason": "Forbidden" if code == 403 else "InternalError",
        },
    }
    return _review(review, response)


def _review(review: Review, response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": review.api_version, "kind": "AdmissionReview", "response": response}
