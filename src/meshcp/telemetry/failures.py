"""How a failure of a long-lived part is told: in one line, whatever the exception."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """The first line of the error's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
