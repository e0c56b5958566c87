"""`meshcp bootstrap --proxyless`: gRPC's xDS bootstrap and the files it points at, issued
by the mesh CA for the pod's identity, rewritten whole by every run (rotation), and a clear
error for a pod that is not a proxyless one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from meshcp.certs import pem
from meshcp.identity import ProxyIdentity
from tests.cli.runner import Ran, meshcp
from tests.support.proxyless import clients_manifest, pod


def source(tmp_path: Path) -> Path:
    """The clients of the loopback tests' mesh, and a pod that is not proxyless."""
    found = tmp_path / "mesh"
    found.mkdir(exist_ok=True)
    (found / "mesh.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {meshcp.dev/monitored-by: meshcp}}\n"
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: client, namespace: shop}\n"
        "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: intruder, namespace: shop}\n"
        "---\n"
        + pod("plain-0", "client", "127.0.0.12", "{app: plain}").replace(
            "  annotations: {meshcp.dev/proxyless: grpc}\n", ""
        )
    )
    (found / "clients.yaml").write_text(clients_manifest())
    return found


def bootstrap(capsys: pytest.CaptureFixture[str], tmp_path: Path, pod_name: str, *extra: str) -> Ran:
    return meshcp(
        capsys, "bootstrap", pod_name, "-n", "shop", "--source", str(source(tmp_path)),
        "--state-dir", str(tmp_path / "state"), "--out", str(tmp_path / "out"), "--proxyless",
        "--xds-address", "127.0.0.1:15128", *extra,
    )  # fmt: skip


def test_writes_grpcs_bootstrap_and_the_certificates_it_watches(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ran = bootstrap(capsys, tmp_path, "client-0")
    assert ran.status == 0, ran.err
    out = tmp_path / "out"
    config = json.loads((out / "bootstrap.json").read_text())
    (server,) = config["xds_servers"]
    assert server["server_uri"] == "127.0.0.1:15128" and server["server_features"] == ["xds_v3"]
    (creds,) = server["channel_creds"]
    assert creds["type"] == "tls" and creds["config"]["certificate_file"] == str(out / "xds-cert.pem")
    node = config["node"]
    assert node["metadata"]["meshcp.dev/proxyless"] == "grpc"
    proxy = ProxyIdentity.parse(node["id"])
    assert str(proxy.identity) == "shop/client" and node["cluster"] == "shop/client"
    provider = config["certificate_providers"]["meshcp"]
    assert provider["plugin_name"] == "file_watcher"
    assert provider["config"]["certificate_file"] == str(out / "cert.pem")
    template = config["server_listener_resource_name_template"]
    assert template == "grpc/server?xds.resource.listening_address=%s"
    # The workload certificate names the pod's identity; the xDS one its node id.
    workload = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    san = workload.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/client"
    ]
    xds = x509.load_pem_x509_certificate((out / "xds-cert.pem").read_bytes())
    assert pem.dns_names(xds) == [node["id"]]
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "xds-key.pem").stat().st_mode & 0o777 == 0o600

    # A re-run issues a new certificate and replaces the files whole (rotation).
    again = bootstrap(capsys, tmp_path, "client-0")
    assert again.status == 0, again.err
    renewed = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert renewed.serial_number != workload.serial_number
    assert json.loads((out / "bootstrap.json").read_text())["node"] == node


def test_a_pod_without_the_annotation_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ran = bootstrap(capsys, tmp_path, "plain-0")
    assert ran.status != 0
    assert "not a proxyless gRPC pod" in ran.err and "meshcp.dev/proxyless: grpc" in ran.err
    assert "Traceback" not in ran.err
    assert not (tmp_path / "out" / "bootstrap.json").exists()


def test_refresh_is_for_proxyless_bootstraps_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ran = meshcp(
        capsys, "bootstrap", "client-0", "-n", "shop", "--source", str(source(tmp_path)),
        "--out", str(tmp_path / "out"), "--refresh", "30",
    )  # fmt: skip
    assert ran.status == 2 and "--refresh is for --proxyless" in ran.err


def test_insecure_xds_writes_no_xds_client_certificate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ran = bootstrap(capsys, tmp_path, "client-0", "--insecure-xds", "--watch-interval", "5")
    assert ran.status == 0, ran.err
    out = tmp_path / "out"
    config = json.loads((out / "bootstrap.json").read_text())
    assert config["xds_servers"][0]["channel_creds"] == [{"type": "insecure"}]
    assert config["certificate_providers"]["meshcp"]["config"]["refresh_interval"] == "5s"
    assert sorted(p.name for p in out.iterdir()) == ["bootstrap.json", "ca.pem", "cert.pem", "key.pem"]
