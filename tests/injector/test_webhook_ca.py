"""Which CA `meshcp inject --webhook-config` writes into the caBundle: `--webhook-ca`, else
`ca.crt` beside `--tls-cert` (a kubernetes.io/tls Secret volume), else the served chain's
last certificate. The API server side is tests/kube/test_injector.py."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from meshcp.injector.webhook_ca import read_ca_bundle
from tests.support.kube import write_serving_certificate


def decoded(bundle: str) -> bytes:
    return base64.b64decode(bundle)


def test_the_given_ca_file_wins(tmp_path: Path) -> None:
    ca, cert, _ = write_serving_certificate(tmp_path, "a", ["127.0.0.1"])
    (tmp_path / "ca.crt").write_bytes(b"not used")
    bundle, described = read_ca_bundle(cert, ca)
    assert decoded(bundle) == ca.read_bytes()
    assert "a test CA" in described and str(ca) in described


def test_ca_crt_beside_the_certificate(tmp_path: Path) -> None:
    ca, cert, _ = write_serving_certificate(tmp_path, "a", ["127.0.0.1"])
    (tmp_path / "ca.crt").write_bytes(ca.read_bytes())
    bundle, _ = read_ca_bundle(cert, None)
    assert decoded(bundle) == ca.read_bytes()


def test_else_the_last_certificate_of_the_chain(tmp_path: Path) -> None:
    ca, cert, _ = write_serving_certificate(tmp_path, "a", ["127.0.0.1"])
    chain = tmp_path / "chain.crt"
    chain.write_bytes(cert.read_bytes() + ca.read_bytes())
    bundle, described = read_ca_bundle(chain, None)
    assert decoded(bundle) == ca.read_bytes()
    assert "last certificate" in described


def test_a_file_without_a_certificate_is_an_error(tmp_path: Path) -> None:
    _, cert, _ = write_serving_certificate(tmp_path, "a", ["127.0.0.1"])
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(ValueError):
        read_ca_bundle(cert, empty)
