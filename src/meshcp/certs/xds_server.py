"""The xDS server's own certificate: what proxies verify when they dial the control plane.

It comes from the mesh CA, like every other certificate, so a proxy's bootstrap needs
only the mesh roots. Its chain is the one place a root rotation shows on the xDS channel:
see `XdsServerCredentials`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import xds_server_request
from meshcp.certs.issuer import Issuer
from meshcp.certs.provider import CertificateProvider, IssuedCertificate


class XdsServerCredentials:
    """The xDS listener's certificate from the mesh CA, for the names proxies dial.

    `names` are DNS names and IP addresses as text; an address becomes an IP SAN. With
    the internal CA the chain carries the cross certificates from the signing root back to
    every older root still trusted for xDS: a proxy keeps the roots its bootstrap was
    written with for life, so one bootstrapped before a root rotation trusts only the old
    root and verifies the server as leaf -> cross certificate -> old root, while one
    bootstrapped after it stops at the new root.
    """

    def __init__(self, issuer: Issuer, provider: CertificateProvider, names: Iterable[str]) -> None:
        dns_names: list[str] = []
        addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for name in names:
            try:
                addresses.append(ipaddress.ip_address(name))
            except ValueError:
                dns_names.append(name)
        self._request = xds_server_request(dns_names, addresses)
        self._issuer = issuer
        self._provider = provider

    async def issue(self) -> IssuedCertificate:
        """A new certificate for the listener, with the cross certificates appended."""
        issued = await self._issuer.issue(self._request)
        if not isinstance(self._provider, InternalCA):
            return issued
        crosses = self._provider.cross_chain_pem(issued.certificate)
        if not crosses:
            return issued
        return IssuedCertificate(issued.chain_pem + crosses, issued.private_key_pem, issued.certificate)
