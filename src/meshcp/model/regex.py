"""Regular expressions as Envoy reads them: checked with RE2 itself, the engine Envoy compiles them with.

A pattern Envoy refuses would be NACKed by every proxy that receives it, so it is refused
when the manifest is read instead. Asking RE2 (with Envoy's options: the defaults, errors
not logged) makes what meshcp accepts exactly what Envoy's parser accepts: no
backreferences or lookaround, RE2's own syntax (`\\pL`, `[[:alpha:]]`) allowed, and no
rules of our own to drift from RE2's. Not checked: Envoy's limit on a compiled program's
size (runtime key `re2.max_program_size.error_level`), which each proxy's runtime sets.
"""

from __future__ import annotations

import re2

from meshcp.model.fields import Field, describe


def re2_error(pattern: str) -> str | None:
    """Why RE2 refuses `pattern` (its own words, such as `invalid perl operator: (?=`), or None."""
    options = re2.Options()
    options.log_errors = False  # the reason is returned; RE2 would also print it to stderr
    try:
        re2.compile(pattern, options)
    except re2.error as error:
        raw = error.args[0] if error.args else b""
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    except UnicodeEncodeError:
        return "not UTF-8 text (it holds a lone surrogate)"
    return None


def read_regex(field: Field) -> str:
    """An optional pattern field (`pathRegex`, a header's value) that Envoy's RE2 accepts."""
    pattern = field.string()
    reason = re2_error(pattern)
    if reason is not None:
        field.fail(f"invalid regular expression {describe(pattern)} (RE2, Envoy's engine): {reason}")
    return pattern
