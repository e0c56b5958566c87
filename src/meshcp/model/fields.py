"""Reading a manifest one field at a time, so that a wrong value names the field it is in.

Every reader of this package goes through `Field`: a value that is not what meshcp needs
is always reported the same way, as the field's path (`spec.ports[0].port`) followed by
what is wrong with it, whatever the kind. `parse_object` turns that into `InvalidObject`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from meshcp.model.meta import frozen_map


class FieldError(Exception):
    """A field is wrong; the message starts with the field's path."""


@dataclass(frozen=True, slots=True)
class Field:
    """A value in a manifest and the path that names it in messages (`spec.ports[0].port`)."""

    value: Any
    path: str

    def fail(self, problem: str) -> NoReturn:
        raise FieldError(f"{self.path}: {problem}" if self.path else problem)

    @property
    def present(self) -> bool:
        return self.value is not None

    def mapping(self) -> Mapping[str, Any]:
        if self.value is None:
            return {}
        if not isinstance(self.value, Mapping):
            self.fail(f"must be a mapping, got {describe(self.value)}")
        for key in self.value:
            if not isinstance(key, str):
                self.fail(f"keys must be strings, got {describe(key)}")
        return self.value

    def field(self, key: str) -> Field:
        return Field(self.mapping().get(key), f"{self.path}.{key}" if self.path else key)

    def items(self) -> list[Field]:
        if self.value is None:
            return []
        if not isinstance(self.value, list):
            self.fail(f"must be a list, got {describe(self.value)}")
        return [Field(item, f"{self.path}[{index}]") for index, item in enumerate(self.value)]

    def string(self, *, required: bool = False) -> str:
        if self.value is None or (required and self.value == ""):
            if required:
                self.fail("required")
            return ""
        if not isinstance(self.value, str):
            self.fail(f"must be a string, got {describe(self.value)}{_quote_hint(self.value)}")
        return self.value

    def one_of(self, choices: tuple[str, ...]) -> str:
        """A required string that must be one of `choices` (an enum of the schema)."""
        value = self.string(required=True)
        if value not in choices:
            self.fail(f"must be one of {', '.join(choices)}, got {describe(value)}")
        return value

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            self.fail(f"must be true or false, got {describe(self.value)}")
        return self.value

    def port(self) -> int:
        value = self.value
        if value is None:
            self.fail("required")
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"must be a port number 1..65535, got {describe(value)}")
        if not 1 <= value <= 65535:
            self.fail(f"must be a port number 1..65535, got {value}")
        return value

    def string_map(self) -> Mapping[str, str]:
        values = self.mapping()
        for key, value in values.items():
            if not isinstance(value, str):
                Field(value, f"{self.path}.{key}").string()
        return frozen_map(values)


def describe(value: object) -> str:
    """A value as a message shows it: YAML's spelling for null and booleans, long text cut."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _quote_hint(value: object) -> str:
    """YAML turns `version: 1`, `on`, `2024-01-01` into non-strings; say how to keep text."""
    if isinstance(value, bool | int | float) or type(value).__name__ in ("date", "datetime"):
        return " (quote it to keep it text)"
    return ""
