"""MeshConfig's run-time settings reach the running controller (debounce, certificate lifetime)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from meshcp.certs.setup import CaSettings
from meshcp.identity import Identity
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.parse import parse_object
from meshcp.model.state import MeshState
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Settings
from meshcp.runtime.store import Store


def test_store_debounce_can_change_and_is_checked() -> None:
    store = Store(window=0.1, max_wait=1.0)
    store.set_debounce(0.5, 2.0)
    assert store.debounce == (0.5, 2.0)
    with pytest.raises(ValueError, match="window <= max_wait"):
        store.set_debounce(3.0, 2.0)
    assert store.debounce == (0.5, 2.0)


async def test_mesh_config_sets_debounce_and_certificate_lifetime() -> None:
    runtime = await ControllerRuntime.open(Settings())
    # Without a MeshConfig object the command line's settings stay.
    runtime.rounds.apply_mesh_config(MeshState())
    assert runtime.store.debounce == (0.1, 1.0)
    assert runtime.rounds.cert_validity == timedelta(hours=24)

    config = MeshConfig(
        debounce_window=0.25,
        debounce_max=3.0,
        cert_validity_seconds=3600,
        explicit=frozenset({"debounce_window", "debounce_max", "cert_validity_seconds"}),
    )
    runtime.rounds.apply_mesh_config(MeshState().with_changes([config]))
    assert runtime.store.debounce == (0.25, 3.0)
    assert runtime.rounds.cert_validity == timedelta(hours=1)
    issued = await runtime.certificates.get(Identity("shop", "web"))
    lifetime = issued.certificate.not_valid_after_utc - issued.certificate.not_valid_before_utc
    # Issued for an hour (the CA may back-date the start a little against clock skew).
    assert timedelta(minutes=59) <= lifetime <= timedelta(minutes=70)


async def test_a_mesh_config_without_cert_validity_keeps_the_command_lines() -> None:
    """Its default (24 h) is not a choice: `--cert-validity` stays until a MeshConfig sets
    `certValidity`, and comes back when it no longer does."""
    runtime = await ControllerRuntime.open(Settings(ca=CaSettings(validity=timedelta(hours=2))))
    runtime.rounds.apply_mesh_config(MeshState().with_changes([MeshConfig(permissive=True)]))
    assert runtime.rounds.cert_validity == timedelta(hours=2)
    setting = MeshConfig(cert_validity_seconds=600, explicit=frozenset({"cert_validity_seconds"}))
    runtime.rounds.apply_mesh_config(MeshState().with_changes([setting]))
    assert runtime.rounds.cert_validity == timedelta(minutes=10)
    runtime.rounds.apply_mesh_config(MeshState().with_changes([MeshConfig()]))
    assert runtime.rounds.cert_validity == timedelta(hours=2)


async def test_osms_meshconfig_sets_the_certificate_lifetime_and_keeps_the_debounce() -> None:
    """`spec.certificate.serviceCertValidityDuration` of OSM's MeshConfig is the lifetime of
    certificates issued from then on; OSM has no debounce, so the command line's stays."""
    runtime = await ControllerRuntime.open(Settings(debounce_window=0.2, debounce_max=2.0))
    osm = parse_object(
        {
            "apiVersion": "config.openservicemesh.io/v1alpha3",
            "kind": "MeshConfig",
            "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
            "spec": {"certificate": {"serviceCertValidityDuration": "30m"}},
        }
    )
    runtime.rounds.apply_mesh_config(MeshState().with_changes([osm]))
    assert runtime.rounds.cert_validity == timedelta(minutes=30)
    assert runtime.store.debounce == (0.2, 2.0)
    issued = await runtime.certificates.get(Identity("shop", "web"))
    lifetime = issued.certificate.not_valid_after_utc - issued.certificate.not_valid_before_utc
    assert timedelta(minutes=29) <= lifetime <= timedelta(minutes=40)
