"""What to ask the CA for, for each kind of certificate the mesh uses."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from ipaddress import IPv4Address, IPv6Address

from meshcp.certs.keys import KeySpec
from meshcp.certs.provider import DEFAULT_WORKLOAD_VALIDITY, CertificateRequest
from meshcp.identity import DEFAULT_TRUST_DOMAIN, Identity, ProxyIdentity

DEFAULT_XDS_VALIDITY = timedelta(days=365)
"""xDS client certificates sit in a proxy's bootstrap, which is written once when the pod
starts and cannot be refreshed by xDS itself, so they must outlive any pod."""


def workload_request(
    identity: Identity,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    *,
    validity: timedelta = DEFAULT_WORKLOAD_VALIDITY,
    key_spec: KeySpec = KeySpec.ECDSA_P256,
) -> CertificateRequest:
    """A workload (service) certificate: SPIFFE URI SAN and DNS SAN of the service account."""
    dns_name = identity.dns_name(trust_domain)
    return CertificateRequest(
        common_name=dns_name,
        dns_names=(dns_name,),
        uris=(identity.spiffe_id(trust_domain),),
        validity=validity,
        key_spec=key_spec,
    )


def xds_client_request(
    proxy: ProxyIdentity,
    *,
    validity: timedelta = DEFAULT_XDS_VALIDITY,
    key_spec: KeySpec = KeySpec.ECDSA_P256,
) -> CertificateRequest:
    """A proxy's xDS client certificate, named `<proxy-uuid>.sidecar.<sa>.<ns>.<td>` (DNS SAN and CN)."""
    return CertificateRequest(
        common_name=proxy.name, dns_names=(proxy.name,), validity=validity, key_spec=key_spec
    )


def xds_server_request(
    dns_names: Iterable[str],
    ip_addresses: Iterable[IPv4Address | IPv6Address] = (),
    *,
    validity: timedelta = DEFAULT_XDS_VALIDITY,
    key_spec: KeySpec = KeySpec.ECDSA_P256,
) -> CertificateRequest:
    """The xDS server's certificate, for the names and addresses proxies dial."""
    names = tuple(dict.fromkeys(dns_names))
    ips = tuple(dict.fromkeys(ip_addresses))
    common_name = names[0] if names else str(ips[0]) if ips else ""
    return CertificateRequest(
        common_name=common_name, dns_names=names, ip_addresses=ips, validity=validity, key_spec=key_spec
    )
