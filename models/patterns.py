"""Topic and consumer-group patterns: checked when a request carries them, matched in linear time by RE2.

Replicators match every topic and group name of a cluster against these patterns, again and again, on a worker's
event loop; a backtracking engine lets one pattern stall the fleet (``.*-.*-.*-.*-dlq`` took 0.15 s per
249-character name with many dashes). Patterns therefore run on RE2 (google-re2), whose matching time is linear in
the name's length whatever the pattern: the engine's ``NameFilter`` (``workers/engine/spec.py``) compiles them
with the same options as here.

RE2 has no backreferences, lookaround, atomic groups, possessive quantifiers or conditionals, which need
backtracking; a pattern using one is refused naming the construct. RE2 also bounds a compiled pattern's memory
(``MAX_PATTERN_MEMORY``) and a repetition count (1000), so the work one request's patterns can cost is bounded;
the request shapes already cap a pattern's length and a list's size. Patterns are full-matched against names
(Java's ``matches()``, as MSK does).
"""

from __future__ import annotations

import re

import re2

from models.errors import InvalidRequestError

MAX_PATTERN_MEMORY = 8 << 20  # bytes RE2 may spend compiling one pattern (as workers/engine/spec.py)

# Constructs only a backtracking engine runs, as they appear outside character classes.
_UNSUPPORTED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\\[1-9]"), "a backreference (\\1 ... \\9)"),
    (re.compile(r"\\k<"), "a named backreference (\\k<name>)"),
    (re.compile(r"\(\?P="), "a named backreference ((?P=name))"),
    (re.compile(r"\(\?<?="), "a lookaround assertion ((?=...), (?<=...))"),
    (re.compile(r"\(\?<?!"), "a negative lookaround assertion ((?!...), (?<!...))"),
    (re.compile(r"\(\?>"), "an atomic group ((?>...))"),
    (re.compile(r"\(\?\("), "a conditional ((?(...)...))"),
    (re.compile(r"[*+?}]\+"), "a possessive quantifier (*+, ++, ?+, {n}+)"),
    (re.compile(r"\\Z"), "\\Z (use \\z or $)"),
)


def options() -> re2.Options:
    """The RE2 options every pattern is compiled with, at the API and in the engine."""
    opts = re2.Options()
    opts.max_mem = MAX_PATTERN_MEMORY
    opts.log_errors = False
    return opts


def _outside_classes(pattern: str) -> str:
    """The pattern with escaped characters kept and character classes blanked (``[(?=]`` is no lookahead)."""
    out = []
    i = 0
    in_class = False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            # An escaped letter or digit (\1, \k, \Z) may be a construct; an escaped symbol (\( \[) is a literal.
            kept = not in_class and pattern[i + 1].isalnum()
            out.append(pattern[i : i + 2] if kept else "  ")
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
            out.append(" ")
        elif char == "[":
            in_class = True
            out.append(" ")
            if pattern[i + 1 : i + 2] == "]":  # a leading ] belongs to the class
                out.append(" ")
                i += 1
        else:
            out.append(char)
        i += 1
    return "".join(out)


def unsupported_construct(pattern: str) -> str | None:
    """The first construct RE2 cannot run, described, or None."""
    visible = _outside_classes(pattern)
    for construct, description in _UNSUPPORTED:
        if construct.search(visible):
            return description
    return None


def check_pattern(pattern: str, parameter: str) -> None:
    """Raise InvalidRequestError naming ``parameter`` unless RE2 compiles ``pattern``."""
    construct = unsupported_construct(pattern)
    if construct is not None:
        raise InvalidRequestError(
            f"{parameter}: {pattern[:300]!r} uses {construct}, which patterns do not support: they run on a "
            "linear-time engine (RE2), so every name is matched in bounded time",
            parameter,
        )
    try:
        re2.compile(pattern, options())
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidRequestError(
            f"{parameter}: {pattern[:300]!r} is not a valid pattern ({reason})", parameter
        ) from None
