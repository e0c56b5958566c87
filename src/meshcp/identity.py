"""Who a certificate is for, and the names that say so.

The mesh identity is a Kubernetes service account. Its names in certificates are fixed
by the design: URI SAN `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` (what RBAC matches) and
DNS SAN `<sa>.<ns>.<trust-domain>`. A proxy's xDS client certificate is named
`<proxy-uuid>.sidecar.<sa>.<ns>.<trust-domain>`, which is also its Envoy node id.

Names are validated on construction so that every name built from them parses back
unambiguously: namespaces are single DNS labels, proxy ids are canonical UUIDs (no dots),
and the trust domain is known to the parser, so a service account name may contain dots.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"

_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_SUBDOMAIN = 253
_SIDECAR = "sidecar"


def validate_trust_domain(trust_domain: str) -> str:
    """Return the trust domain if it is a lowercase DNS name, else raise ValueError.

    SPIFFE would allow underscores, but the trust domain also ends the DNS SANs, so it
    must be a valid DNS name.
    """
    if len(trust_domain) > _MAX_SUBDOMAIN or not _SUBDOMAIN_RE.fullmatch(trust_domain):
        raise ValueError(f"invalid trust domain {trust_domain!r}: must be a lowercase DNS name")
    return trust_domain


@dataclass(frozen=True, order=True, slots=True)
class Identity:
    """A workload identity: one service account in one namespace."""

    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _LABEL_RE.fullmatch(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}: must be a DNS label")
        if len(self.service_account) > _MAX_SUBDOMAIN or not _SUBDOMAIN_RE.fullmatch(self.service_account):
            raise ValueError(f"invalid service account {self.service_account!r}: must be a DNS subdomain")

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service_account}"

    @classmethod
    def parse(cls, text: str) -> Identity:
        """Read the `<ns>/<sa>` form used in logs and secret names."""
        namespace, sep, service_account = text.partition("/")
        if not sep:
            raise ValueError(f"invalid identity {text!r}: expected <namespace>/<service-account>")
        return cls(namespace, service_account)

    def spiffe_id(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
        """The URI SAN that RBAC principals match."""
        validate_trust_domain(trust_domain)
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def from_spiffe_id(cls, uri: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Identity:
        """Read `spiffe_id` back; ValueError if `uri` names no workload of `trust_domain`.

        A namespace is a DNS label (no slash), so the first `/sa/` after it ends it."""
        prefix = f"spiffe://{validate_trust_domain(trust_domain)}/ns/"
        namespace, sep, service_account = uri.removeprefix(prefix).partition("/sa/")
        if not uri.startswith(prefix) or not sep:
            raise ValueError(f"{uri!r} is not a SPIFFE id spiffe://{trust_domain}/ns/<ns>/sa/<sa>")
        return cls(namespace, service_account)

    def dns_name(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
        """The DNS SAN, for peers that cannot match URI SANs."""
        validate_trust_domain(trust_domain)
        return f"{self.service_account}.{self.namespace}.{trust_domain}"


@dataclass(frozen=True, slots=True)
class ProxyIdentity:
    """One sidecar proxy: its UUID, the identity of its pod, and the trust domain."""

    proxy_uuid: str
    identity: Identity
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def __post_init__(self) -> None:
        try:
            canonical = str(uuid.UUID(self.proxy_uuid))
        except ValueError:
            canonical = ""
        if canonical != self.proxy_uuid:
            raise ValueError(f"invalid proxy UUID {self.proxy_uuid!r}: must be a lowercase canonical UUID")
        validate_trust_domain(self.trust_domain)
        if len(self.name) > _MAX_SUBDOMAIN:
            raise ValueError(f"proxy name {self.name!r} is longer than {_MAX_SUBDOMAIN} characters")

    @property
    def name(self) -> str:
        """`<proxy-uuid>.sidecar.<sa>.<ns>.<trust-domain>`: the certificate name and node id."""
        ident = self.identity
        return f"{self.proxy_uuid}.{_SIDECAR}.{ident.service_account}.{ident.namespace}.{self.trust_domain}"

    @classmethod
    def parse(cls, name: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> ProxyIdentity:
        """Read a proxy name back; ValueError says what is wrong with it."""
        suffix = "." + validate_trust_domain(trust_domain)
        if not name.endswith(suffix):
            raise ValueError(f"{name!r} is not in trust domain {trust_domain!r}")
        labels = name.removesuffix(suffix).split(".")
        if len(labels) < 4 or labels[1] != _SIDECAR:
            raise ValueError(f"{name!r} is not a sidecar name <proxy-uuid>.sidecar.<sa>.<ns>.{trust_domain}")
        proxy_uuid, namespace, service_account = labels[0], labels[-1], ".".join(labels[2:-1])
        return cls(proxy_uuid, Identity(namespace, service_account), trust_domain)
