"""The AdmissionReview envelope: requests read, answers in the apiVersion they came in."""

from __future__ import annotations

import pytest

from meshcp.injector.pod_patch import sidecar_patch
from meshcp.injector.review import MalformedReview, allowed_response, denied_response, parse_review
from tests.injector.injection import MESH, TEMPLATE, candidate_for, new_proxy, to_review
from tests.injector.reviews import deployment_pod, patch_of, review


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_response_echoes_uid_and_api_version(api_version: str) -> None:
    document = review(deployment_pod(), api_version=api_version, uid="0f0e1d2c-aaaa-bbbb-cccc-1234567890ab")
    candidate = candidate_for(document)
    patch = sidecar_patch(candidate, new_proxy(candidate), TEMPLATE, MESH)
    response = allowed_response(to_review(document), patch=patch)
    assert response["apiVersion"] == api_version
    assert response["kind"] == "AdmissionReview"
    assert response["response"]["uid"] == "0f0e1d2c-aaaa-bbbb-cccc-1234567890ab"
    assert response["response"]["allowed"] is True
    assert patch_of(response) == patch.operations
    denied = denied_response(to_review(document), "no")
    assert denied["apiVersion"] == api_version
    assert denied["response"] == {
        "uid": "0f0e1d2c-aaaa-bbbb-cccc-1234567890ab",
        "allowed": False,
        "status": {"code": 403, "message": "no", "reason": "Forbidden"},
    }


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"[]", "JSON object"),
        (b'{"apiVersion": "v1", "kind": "AdmissionReview"}', "apiVersion must be"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}', "kind must be AdmissionReview"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request: required"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}', "request.uid"),
    ],
)
def test_malformed_reviews_say_what_is_wrong(body: bytes, words: str) -> None:
    with pytest.raises(MalformedReview, match=words):
        parse_review(body)
