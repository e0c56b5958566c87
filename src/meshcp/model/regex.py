"""Regular expressions as Envoy reads them: checked with RE2 itself, the engine Envoy compiles them with.

A pattern Envoy refuses would be NACKed by every proxy that receives it, so it is refused
when the manifest is read instead. Asking RE2 (with Envoy's options: the defaults, errors
not logged) makes what meshcp accepts exactly what Envoy's parser accepts: no
backreferences or lookaround, RE2's own syntax (`\\pL`, `[[:alpha:]]`) allowed, and no
rules of our own to drift from RE2's.

Envoy also refuses a regex whose compiled RE2 program is larger than its runtime key
`re2.max_program_size.error_level` allows (100 by default; meshcp's bootstraps keep the
default). RE2 measures that size itself, on the regex as it is sent (`envoy_regex`: a
`pathRegex` goes out wrapped as a prefix), not as it was written. The number Envoy 1.40
compares is the size of the program RE2 builds from the regex's bytes read as Latin-1
(one instruction for `.` or `[^/]` where UTF-8 needs eight): measured against the
sizes a real Envoy states when it NACKs, for ASCII and non-ASCII patterns alike, and
held to by tests/test_envoy_regex.py at the limit.
"""

from __future__ import annotations

import re2

from meshcp.model.fields import Field, describe

#: The largest RE2 program Envoy compiles: the default of its runtime key
#: `re2.max_program_size.error_level` (a larger one is refused, and the resource NACKed).
ENVOY_MAX_PROGRAM_SIZE = 100


def _options(encoding: re2.Options.Encoding = re2.Options.Encoding.UTF8) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the reason is returned; RE2 would also print it to stderr
    options.encoding = encoding
    return options


def re2_error(pattern: str) -> str | None:
    """Why RE2 refuses `pattern` (its own words, such as `invalid perl operator: (?=`), or None."""
    try:
        re2.compile(pattern, _options())
    except re2.error as error:
        raw = error.args[0] if error.args else b""
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    except UnicodeEncodeError:
        return "not UTF-8 text (it holds a lone surrogate)"
    return None


def program_size(regex: str) -> int:
    """The size of the program RE2 compiles `regex` to, as Envoy measures it against its
    limit (`regex` must be one RE2 accepts)."""
    size: int = re2.compile(regex.encode(), _options(re2.Options.Encoding.LATIN1)).programsize
    return size


def envoy_regex(pattern: str, *, prefix: bool = False) -> str:
    """The regex Envoy is sent for `pattern`. Envoy's safe_regex matches in full, so a
    pattern anchored at the start only (SMI's `pathRegex`) goes out as a prefix."""
    return f"(?:{pattern}).*" if prefix and pattern else pattern


def read_regex(field: Field, *, prefix: bool = False) -> str:
    """An optional pattern field (`pathRegex`, a header's value) that Envoy's RE2 accepts and
    compiles within Envoy's program size limit; `prefix` as in `envoy_regex`."""
    pattern = field.string()
    reason = re2_error(pattern)
    if reason is not None:
        field.fail(f"invalid regular expression {describe(pattern)} (RE2, Envoy's engine): {reason}")
    size = program_size(envoy_regex(pattern, prefix=prefix))
    if size > ENVOY_MAX_PROGRAM_SIZE:
        field.fail(
            f"regular expression {describe(pattern)} is too large for Envoy: its RE2 program size is "
            f"{size}{' as a prefix' if prefix else ''}, over Envoy's limit of {ENVOY_MAX_PROGRAM_SIZE} "
            "(re2.max_program_size.error_level); every proxy would refuse it"
        )
    return pattern


def full_match(pattern: str, text: str) -> bool:
    """Whether RE2 matches all of `text` with `pattern`, as Envoy's `safe_regex` does."""
    return re2.fullmatch(pattern, text) is not None
