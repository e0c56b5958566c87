"""The Kubernetes naming rules meshcp checks, so a name the API server would refuse is refused here.

Names become DNS names, SPIFFE identities and Envoy resource names; a file source has no
API server to check them, so the rules are applied when a manifest is read, whatever its
source.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from meshcp.model.fields import Field, describe

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_LABEL = (
    "a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit, "
    "at most 63 characters)"
)
_DNS_1035_LABEL = (
    "a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, ending with a "
    "letter or digit, at most 63 characters)"
)
_DNS_SUBDOMAIN = (
    "a DNS subdomain (dot-separated lowercase labels of letters, digits and '-', at most 253 characters)"
)
_PORT_NAME = "a port name (at most 15 lowercase letters, digits and single '-', with at least one letter)"


def dns_label(field: Field, *, required: bool = True) -> str:
    """RFC 1123 label: namespaces, port names, most single-segment names."""
    return _checked(field, required, _is_label, _DNS_LABEL)


def dns_1035_label(field: Field) -> str:
    """RFC 1035 label: Service names (they become DNS names, so they must start with a letter)."""
    return _checked(field, True, _is_1035_label, _DNS_1035_LABEL)


def dns_subdomain(field: Field, *, required: bool = True) -> str:
    """RFC 1123 subdomain: the name rule of most Kubernetes kinds."""
    return _checked(field, required, _is_subdomain, _DNS_SUBDOMAIN)


def port_name(field: Field) -> str:
    """IANA service name: a container port name, or a Service targetPort given by name."""
    return _checked(field, False, _is_port_name, _PORT_NAME)


def _checked(field: Field, required: bool, valid: Callable[[str], bool], rule: str) -> str:
    value = field.string(required=required)
    if value and not valid(value):
        field.fail(f"must be {rule}, got {describe(value)}")
    return value


def _is_label(value: str) -> bool:
    return len(value) <= 63 and _LABEL.fullmatch(value) is not None


def _is_1035_label(value: str) -> bool:
    return len(value) <= 63 and _LABEL_1035.fullmatch(value) is not None


def _is_subdomain(value: str) -> bool:
    return len(value) <= 253 and all(_LABEL.fullmatch(part) for part in value.split("."))


def _is_port_name(value: str) -> bool:
    return (
        len(value) <= 15 and _LABEL.fullmatch(value) is not None and "--" not in value and not value.isdigit()
    )
