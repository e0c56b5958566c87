"""OSM's IngressBackend: who outside the mesh may reach which port of a service's pods.

An IngressBackend belongs to its backends' services: only the inbound listeners of the
pods behind them change (one chain per admitted port, `compile.ingress`), so a change to
one re-encodes those listeners and nothing else. Its sources resolve here, once per
build: a Service's ready endpoints become /32 (or /128) ranges, IPRanges stay as written,
AuthenticatedPrincipals become the mesh identities RBAC matches.

One port of a pod answers to one IngressBackend: the ingress chain is matched by port and
transport alone (plain text carries no name to tell two apart), so two IngressBackends
admitting ingress to one backend port, or to ports of services that land on the same port
of the same pods, are all reported and none of them applies there (the rule for
TrafficSplits on one apex): which one was meant is not meshcp's to guess.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from meshcp.identity import Identity
from meshcp.model.meta import ObjectRef
from meshcp.model.osm_policy import IngressBackend
from meshcp.model.state import MeshState
from meshcp.policy.backends import Backends
from meshcp.policy.types import InboundPort, IngressRule, Report, ServiceKey


@dataclass(frozen=True, slots=True)
class Admission:
    """One backend of one IngressBackend, its sources resolved: the rule (its service port
    0, filled in from the pod's inbound port) and the object it comes from."""

    ref: ObjectRef
    rule: IngressRule


#: Admissions by (backend service, the port its pods listen on).
IngressTable = Mapping[tuple[ServiceKey, int], Admission]


def ingress_table(
    state: MeshState, backends: Backends, trust_domain: str, report: Report
) -> dict[tuple[ServiceKey, int], Admission]:
    """Each backend port named by exactly one IngressBackend, with its sources resolved.
    Backends and source Services that do not exist are reported; they apply once they do."""
    claims: dict[tuple[ServiceKey, int], list[Admission]] = defaultdict(list)
    for ingress in state.ingress_backends:
        if ingress.matches:
            report(
                ingress.ref,
                "matches: not applied (OSM never applied them either): every request from the "
                "sources is admitted",
            )
        ranges, principals = _sources(state, backends, ingress, trust_domain, report)
        for backend in ingress.backends:
            key = ServiceKey(ingress.meta.namespace, backend.name)
            service = state.service_index.get((key.namespace, key.name))
            if service is None:
                report(
                    ingress.ref, f"backends: Service {key} does not exist; the ingress applies once it does"
                )
            elif key.namespace not in backends.meshed_ns:
                report(
                    ingress.ref,
                    f"backends: Service {key} is not in the mesh: no sidecar admits ingress to it",
                )
            elif not any(
                p.target_port == backend.port or isinstance(p.target_port, str) for p in service.ports
            ):
                report(
                    ingress.ref,
                    f"backends: Service {key} has no port whose targetPort is {backend.port} "
                    "(port.number is the port its pods listen on, as in OSM)",
                )
            rule = IngressRule(
                key,
                0,
                backend.port,
                backend.protocol,
                ranges,
                principals if backend.protocol == "https" else None,
                not backend.skip_client_cert_validation,
                backend.sni_hosts,
            )
            claims[(key, backend.port)].append(Admission(ingress.ref, rule))
    table: dict[tuple[ServiceKey, int], Admission] = {}
    for (service_key, port), found in sorted(claims.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        if len(found) > 1:
            names = ", ".join(sorted(a.ref.name for a in found))
            for admission in found:
                report(
                    admission.ref,
                    f"several IngressBackends ({names}) admit ingress to {service_key} port {port}; "
                    "none applies",
                )
            continue
        table[(service_key, port)] = found[0]
    return table


def _sources(
    state: MeshState, backends: Backends, ingress: IngressBackend, trust_domain: str, report: Report
) -> tuple[tuple[str, ...] | None, tuple[Identity, ...] | None]:
    """The source ranges and the principals of `ingress` (None: no source names one, so
    any address, any identity)."""
    ranges: set[str] = set()
    by_address = by_identity = False
    principals: set[Identity] = set()
    for source in ingress.sources:
        if source.kind == "IPRange":
            by_address = True
            ranges.add(source.name)
        elif source.kind == "Service":
            by_address = True
            name = f"{source.namespace}/{source.name}"
            service = state.service_index.get((source.namespace, source.name))
            if service is None:
                report(
                    ingress.ref,
                    f"sources: Service {name} does not exist; its endpoints are admitted once it does",
                )
                continue
            found = {address for _, address, ready in backends.of(service) if ready}
            if not found:
                report(
                    ingress.ref,
                    f"sources: Service {name} has no ready endpoint; its endpoints are admitted once it has",
                )
            ranges.update(str(ipaddress.ip_network(address)) for address in found)
        else:
            by_identity = True
            identity = principal(source.name, trust_domain)
            if identity is None:
                report(
                    ingress.ref,
                    f"sources: AuthenticatedPrincipal {source.name!r} is no identity of the mesh's "
                    f"trust domain {trust_domain!r} (<serviceaccount>.<namespace>.{trust_domain}); "
                    "it admits nobody",
                )
                continue
            principals.add(identity)
    return (
        tuple(sorted(ranges)) if by_address else None,
        tuple(sorted(principals)) if by_identity else None,
    )


def principal(name: str, trust_domain: str) -> Identity | None:
    """The identity an AuthenticatedPrincipal names: OSM's `<sa>.<namespace>.<trust domain>`
    (a certificate's DNS SAN) or a SPIFFE ID; None if it names none of this trust domain."""
    try:
        if name.startswith("spiffe://"):
            return Identity.from_spiffe_id(name, trust_domain)
        account, _, namespace = name.removesuffix(f".{trust_domain}").rpartition(".")
        if not name.endswith(f".{trust_domain}") or not account:
            return None
        return Identity(namespace, account)
    except ValueError:
        return None


def class_ingress(
    inbound: tuple[InboundPort, ...], table: IngressTable, report: Report
) -> tuple[IngressRule, ...]:
    """The ingress rules of a class with these inbound ports: the admissions of its
    services' ports, one per port its pods listen on (see the module for conflicts). An
    https rule whose SNI names include a mesh service's own name on these pods is reported
    and not applied: that name is the mesh's chain (a client sending it is a mesh client)."""
    if not table:
        return ()
    by_port: dict[int, dict[tuple[ServiceKey, int], tuple[InboundPort, Admission]]] = defaultdict(dict)
    for port in inbound:
        found = table.get((port.service, port.target_port))
        if found is not None:
            by_port[port.target_port].setdefault((port.service, port.target_port), (port, found))
    mesh_names = {_mesh_name(port.service) for port in inbound}
    rules: list[IngressRule] = []
    for target, held in sorted(by_port.items()):
        admissions = [admission for _, admission in held.values()]
        refs = sorted({admission.ref for admission in admissions})
        if len(refs) > 1 or len({replace(a.rule, service=ServiceKey("", "")) for a in admissions}) > 1:
            services = ", ".join(sorted(str(service) for service, _ in held))
            names = ", ".join(ref.name for ref in refs)
            for ref in refs:
                report(
                    ref,
                    f"IngressBackends ({names}) admit ingress to {services}, whose pods listen on one "
                    f"port ({target}) for them; none applies there",
                )
            continue
        port, admission = min(held.values(), key=lambda item: (str(item[0].service), item[0].port))
        taken = sorted(mesh_names.intersection(admission.rule.sni_hosts))
        if taken:
            report(
                admission.ref,
                f"backends: SNI {', '.join(taken)} is a mesh service's own name on these pods (a client "
                f"sending it is a mesh client); ingress to {port.service} port {target} does not apply",
            )
            continue
        rules.append(replace(admission.rule, port=port.port))
    return tuple(rules)


def _mesh_name(service: ServiceKey) -> str:
    """The SNI mesh clients send to `service` (as `compile.naming.service_host` names it)."""
    return f"{service.name}.{service.namespace}.svc.cluster.local"
