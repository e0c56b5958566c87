"""Reader of OSM's MeshConfig (config.openservicemesh.io/v1alpha2 and v1alpha3).

The fields with a meshcp equivalent become that setting, checked as meshcp's own MeshConfig
checks it (a bad value makes the object invalid, naming the field, as for any kind). Every
other field that asks for something meshcp does not do is listed as unsupported, once, by
its path, and the rest of the object applies. A field set to the value that means what
meshcp does anyway (`false` for a feature meshcp lacks, OSM's CRD defaults such as
`tlsMinProtocolVersion: TLSv1_2`) asks for nothing and is not reported: OSM's installer writes
every field, and twenty warnings about switches that are off would hide the few that matter.
The trust domain is not in OSM's MeshConfig (OSM kept it in MeshRootCertificate), so it is
the controller's `--trust-domain` (or meshcp's MeshConfig), as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshcp.model.fields import Field
from meshcp.model.meshconfig import SIDECAR_LOG_LEVELS, MeshConfig
from meshcp.model.meta import Meta
from meshcp.model.osm_meshconfig import OsmMeshConfig
from meshcp.model.read_meshconfig import cert_validity, choice, cidrs, non_empty, ports, sidecar_resources

#: OSM field path → (MeshConfig attribute, reader); `sidecar.resources` is a section.
MAPPED: dict[str, tuple[str, Callable[[Field], Any]]] = {
    "traffic.enablePermissiveTrafficPolicyMode": ("permissive", lambda node: node.boolean(False)),
    "traffic.enableEgress": ("egress_passthrough", lambda node: node.boolean(False)),
    "traffic.outboundIPRangeExclusionList": ("outbound_ip_exclusions", cidrs),
    "traffic.outboundIPRangeInclusionList": ("outbound_ip_inclusions", cidrs),
    "traffic.outboundPortExclusionList": ("outbound_port_exclusions", ports),
    "traffic.inboundPortExclusionList": ("inbound_port_exclusions", ports),
    "certificate.serviceCertValidityDuration": ("cert_validity_seconds", cert_validity),
    "sidecar.logLevel": ("sidecar_log_level", choice(SIDECAR_LOG_LEVELS)),
    "sidecar.envoyImage": ("sidecar_image", non_empty),
    "sidecar.resources": ("sidecar_resources", sidecar_resources),
}

#: Either value is fine: meshcp does what the field is for whatever it says.
_EITHER = (False, True)

#: OSM field path → (values that ask for nothing beyond what meshcp does, why meshcp
#: ignores any other).
UNSUPPORTED: dict[str, tuple[tuple[object, ...], str]] = {
    "sidecar.enablePrivilegedInitContainer": ((False,), "the init container has NET_ADMIN and NET_RAW only"),
    "sidecar.envoyWindowsImage": (("",), "meshcp injects Linux pods only"),
    "sidecar.initContainerImage": (("",), "the injector's --init-image sets it"),
    "sidecar.maxDataPlaneConnections": ((0,), "meshcp does not cap proxy connections"),
    "sidecar.configResyncInterval": (("", "0s"), "meshcp pushes on change only, never on a timer"),
    "sidecar.tlsMinProtocolVersion": (("TLSv1_2",), "sidecars use Envoy's TLS defaults, TLS 1.2 minimum"),
    "sidecar.tlsMaxProtocolVersion": (("TLSv1_3",), "sidecars use Envoy's TLS defaults"),
    "sidecar.cipherSuites": (([],), "sidecars use Envoy's default cipher suites"),
    "sidecar.ecdhCurves": (([],), "sidecars use Envoy's default curves"),
    "sidecar.localProxyMode": (("Localhost",), "the sidecar reaches the application on 127.0.0.1"),
    "traffic.networkInterfaceExclusionList": (([],), "exclusions are by port and IP range only"),
    "traffic.inboundExternalAuthorization": ((), "meshcp has no external authorization"),
    "observability.osmLogLevel": ((), "the controller's log level is its --log-level"),
    "observability.enableDebugServer": (
        _EITHER,
        "meshcp serves /debug on its loopback --debug-address",
    ),
    "observability.tracing": ((), "meshcp configures no tracing"),
    "certificate.certKeyBitSize": ((), "workload keys are the controller's --ca-key-type"),
    "certificate.ingressGateway": ((), "meshcp issues no ingress gateway certificate"),
    "featureFlags.enableWASMStats": (_EITHER, "sidecars label their stats without WASM"),
    "featureFlags.enableEgressPolicy": ((True,), "meshcp always applies Egress policies"),
    "featureFlags.enableMulticlusterMode": ((False,), "meshcp is single-cluster"),
    "featureFlags.enableSnapshotCacheMode": (_EITHER, "meshcp always serves from a snapshot cache"),
    "featureFlags.enableAsyncProxyServiceMapping": (_EITHER, "an implementation choice of OSM's"),
    "featureFlags.enableIngressBackendPolicy": ((True,), "meshcp always applies IngressBackend policies"),
    "featureFlags.enableEnvoyActiveHealthChecks": ((False,), "meshcp configures no active health checks"),
    "featureFlags.enableRetryPolicy": ((True,), "meshcp always applies Retry policies"),
}

#: Sections whose other fields mean nothing while `enable` is false (or absent).
_SWITCHED = ("traffic.inboundExternalAuthorization", "observability.tracing")
_SECTIONS = ("sidecar", "traffic", "observability", "certificate", "featureFlags")


def read_osm_mesh_config(root: Field, meta: Meta, version: str) -> OsmMeshConfig:
    spec = root.field("spec")
    values: dict[str, Any] = {}
    sources: list[tuple[str, str]] = []
    unsupported: list[tuple[str, str]] = []
    for section in spec.mapping():
        node = spec.field(section)
        if section not in _SECTIONS:
            if node.present:
                unsupported.append((node.path, f"not a field of OSM's MeshConfig {version}"))
            continue
        for key in node.mapping():
            item = node.field(key)
            path = f"{section}.{key}"
            if not item.present:
                continue
            mapped = MAPPED.get(path)
            if mapped is not None:
                attribute, read = mapped
                if attribute == "sidecar_resources":
                    values.update(read(item))
                    sources += [("sidecar_requests", item.path), ("sidecar_limits", item.path)]
                else:
                    values[attribute] = read(item)
                    sources.append((attribute, item.path))
                continue
            why = _unsupported(path, item, version)
            if why is not None:
                unsupported.append((item.path, why))
    explicit = frozenset(values)
    settings = MeshConfig(meta=meta, **values, explicit=explicit)
    return OsmMeshConfig(meta, settings, tuple(sources), tuple(unsupported))


def _unsupported(path: str, item: Field, version: str) -> str | None:
    """Why the field at `path` is ignored, or None when its value asks for nothing."""
    known = UNSUPPORTED.get(path)
    if known is None:
        return f"not a field of OSM's MeshConfig {version}"
    neutral, why = known
    value = item.value
    if path in _SWITCHED:
        enabled = value.get("enable") if isinstance(value, dict) else None
        return why if enabled is True else None
    if any(_same(value, choice) for choice in neutral):
        return None
    return why


def _same(value: object, neutral: object) -> bool:
    """Equal, without `0 == False` (a wrong type is a value that asks for something)."""
    return type(value) is type(neutral) and value == neutral
