"""Tolerant readers of decoded JSON: a field that is missing or of the wrong type reads as empty.

Admission requests and lab manifests hold whatever their author wrote, and the injector
answers every one of them: Kubernetes validates a Pod only after mutating webhooks ran, and
its message then says what is wrong better than ours could. So reading a field never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def string(value: object) -> str:
    return value if isinstance(value, str) else ""


def mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def array(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def string_map(value: object) -> dict[str, str]:
    """The entries of a map whose keys and values are both strings (labels, annotations)."""
    return {k: v for k, v in mapping(value).items() if isinstance(k, str) and isinstance(v, str)}
