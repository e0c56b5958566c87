"""Regular expressions: what Envoy's RE2 accepts is accepted, what it refuses is refused."""

from __future__ import annotations

import pytest

from meshcp.model.regex import re2_error


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "/books-bought",
        ".*a-book.*new",
        r"^(.*?;)?(type=insider)(;.*)?$",
        r"/api/v[0-9]+/.*",
        r"\d{1,3}\.\d{1,3}",
        "a{2,}?",
        "(?i)get",
        "(?P<id>[a-z]+)",
        "[]a]",
        "[^]a]+",
        r"[\w.-]+",
        r"\bword\b",
        r"\x41\0",
        "a{1000}",
        # Envoy accepts these (RE2 reads `{,3}` as text and `[[:alpha:]]` as a POSIX class),
        # so meshcp does too, though Python reads them otherwise.
        "a{,3}",
        "[[:alpha:]]",
        # RE2 syntax that Python lacks.
        r"\pL+",
        r"a\z",
    ],
)
def test_re2_compatible_patterns(pattern: str) -> None:
    assert re2_error(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", r"invalid escape sequence: \1"),
        ("(?P<a>x)(?P=a)", "invalid perl operator: (?P"),
        ("(?=x)", "invalid perl operator: (?="),
        ("(?!x)", "invalid perl operator: (?!"),
        ("(?<=x)", "invalid perl operator: (?<="),
        ("(?<!x)", "invalid perl operator: (?<!"),
        ("(?>a)", "invalid perl operator: (?>"),
        ("a*+", "bad repetition operator: *+"),
        ("a{2}+", "bad repetition operator: {2}+"),
        ("(a)?(?(1)b|c)", "invalid perl operator: (?("),
        ("(?#note)a", "invalid perl operator: (?#"),
        ("(?x)a b", "invalid perl operator: (?x"),
        (r"a\Z", r"invalid escape sequence: \Z"),
        (r"\u0041", r"invalid escape sequence: \u"),
        ("a{1001}", "invalid repetition size: {1001}"),
        ("[a--b]", "invalid character class range: a--"),
        (r"[\b]", r"invalid escape sequence: \b"),
        ("/books([", "missing ]: ["),
        ("a\ud800", "not UTF-8 text"),
    ],
)
def test_re2_incompatible_patterns(pattern: str, reason: str) -> None:
    problem = re2_error(pattern)
    assert problem is not None and reason in problem, problem
