"""Refuse topic and consumer-group patterns that do not compile or could backtrack catastrophically.

Replicators match every topic and group name of a cluster against these patterns, again and again, so one
pattern with exponential backtracking would stall a worker. Two checks run on each pattern:

1. A static check on the parsed pattern (``sre_parse``) refuses the shapes that cause exponential
   backtracking: a repetition that contains another variable repetition (star height above one, e.g.
   ``(a+)+``, ``(a*)*``, ``(\\w+\\d?)*``), and a repetition around alternatives that can start with the same
   character or that can both match nothing (``(\\d|1x)*``, ``((x)|(x))+``, ``(a|a)*``, which the parser
   turns into ``a(|)``). It is deliberately conservative: ``(ab*c)+`` is refused although it is safe; such a
   pattern can always be rewritten.
2. A bounded trial: the pattern is full-matched (Java's ``matches()`` semantics, which MSK uses) against
   floods of each character it mentions followed by a character that breaks the match, with growing length.
   A trial that takes longer than ``TRIAL_BUDGET_SECONDS``, or trials that together take longer than
   ``TRIAL_TOTAL_BUDGET_SECONDS``, refuse the pattern. Lengths grow slowly, so even a
   pattern that slipped past the static check (e.g. ``x*x*x*x*x*x*x*x*y``, polynomial but still
   catastrophic) costs at most a few budgets before it is refused.

Patterns are Python regular expressions (the engine the workers use); they are matched against whole names.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from models.errors import InvalidRequestError

with warnings.catch_warnings():
    # sre_parse is the documented-but-deprecated alias of re._parser; it is the only parser of Python's own
    # regex syntax, and its typeshed stubs keep this module type-checked.
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_constants as c
    import sre_parse

TRIAL_BUDGET_SECONDS = 0.01
TRIAL_TOTAL_BUDGET_SECONDS = 0.05
TRIAL_LENGTHS = (4, 7, 10, 13, 16, 19, 22, 25)
# Characters Kafka allows in topic names, plus space: the alphabet the static first-character analysis uses.
_ALPHABET = frozenset(chr(code) for code in range(0x20, 0x7F))
_DEFAULT_FLOOD_CHARS = "aA0_-. "
_BREAK_CHARS = ("\x00", "!")

_REPEATS = (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT))
_Items = Sequence[tuple[Any, Any]]


class UnsafePatternError(ValueError):
    pass


def check_pattern(pattern: str, parameter: str) -> None:
    """Raise InvalidRequestError naming ``parameter`` unless ``pattern`` compiles and is safe to match."""
    try:
        compiled = re.compile(pattern)
        _check_structure(list(sre_parse.parse(pattern).data))
        _trial(compiled, pattern)
    except re.error as exc:
        raise InvalidRequestError(
            f"{parameter}: {pattern!r} is not a valid regular expression ({exc})", parameter
        ) from None
    except (UnsafePatternError, RecursionError, OverflowError) as exc:
        reason = str(exc) if isinstance(exc, UnsafePatternError) else "it is too deeply nested"
        raise InvalidRequestError(
            f"{parameter}: {pattern!r} is refused because matching it could take catastrophic time: {reason}",
            parameter,
        ) from None


def _check_structure(items: _Items, inside_repeat: bool = False) -> None:
    for op, av in items:
        if op in _REPEATS:
            low, high, body = av
            variable = low != high
            if inside_repeat and variable:
                raise UnsafePatternError("it nests a variable repetition inside another repetition")
            repeats_many = high is c.MAXREPEAT or high > 1
            if repeats_many:
                _check_alternatives_in(body)
            _check_structure(body, inside_repeat=inside_repeat or repeats_many)
        else:
            for child in _children(op, av):
                _check_structure(child, inside_repeat)


def _children(op: Any, av: Any) -> Iterable[_Items]:
    if op is c.SUBPATTERN:
        yield av[-1]
    elif op is c.BRANCH:
        yield from av[1]
    elif op in (c.ASSERT, c.ASSERT_NOT):
        yield av[1]
    elif op is c.GROUPREF_EXISTS:
        yield av[1]
        if av[2] is not None:
            yield av[2]
    elif op is getattr(c, "ATOMIC_GROUP", None):
        yield av


def _check_alternatives_in(items: _Items) -> None:
    """Alternatives under a repetition must not compete for the same input."""
    for op, av in items:
        if op is c.BRANCH:
            alternatives: list[_Items] = list(av[1])
            if sum(_nullable(alt) for alt in alternatives) > 1:
                raise UnsafePatternError("alternatives inside a repetition can both match the empty string")
            seen: set[str] = set()
            for alt in alternatives:
                first = _first_chars(alt)
                if seen & first:
                    raise UnsafePatternError("alternatives inside a repetition can start with the same character")
                seen |= first
        for child in _children(op, av):
            _check_alternatives_in(child)


def _nullable(items: _Items) -> bool:
    return all(_node_nullable(op, av) for op, av in items)


def _node_nullable(op: Any, av: Any) -> bool:
    if op in (c.AT, c.ASSERT, c.ASSERT_NOT, c.GROUPREF, c.GROUPREF_EXISTS):
        return True
    if op in _REPEATS:
        return bool(av[0] == 0 or _nullable(av[2]))
    if op is c.SUBPATTERN:
        return _nullable(av[-1])
    if op is c.BRANCH:
        return any(_nullable(alt) for alt in av[1])
    if op is getattr(c, "ATOMIC_GROUP", None):
        return _nullable(av)
    return False


def _first_chars(items: _Items) -> frozenset[str]:
    """Which characters of the alphabet a match of ``items`` can start with (over-approximated)."""
    first: set[str] = set()
    for op, av in items:
        first |= _node_first_chars(op, av)
        if not _node_nullable(op, av):
            break
    return frozenset(first)


def _node_first_chars(op: Any, av: Any) -> frozenset[str]:
    if op is c.LITERAL:
        return frozenset({chr(av)})
    if op is c.NOT_LITERAL:
        return _ALPHABET - {chr(av)}
    if op is c.ANY or op is c.GROUPREF or op is c.GROUPREF_EXISTS:
        return _ALPHABET
    if op is c.IN:
        return _charset(av)
    if op in _REPEATS:
        return _first_chars(av[2])
    if op is c.SUBPATTERN:
        return _first_chars(av[-1])
    if op is c.BRANCH:
        return frozenset().union(*(_first_chars(alt) for alt in av[1]))
    if op is getattr(c, "ATOMIC_GROUP", None):
        return _first_chars(av)
    return frozenset()


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


_CATEGORY_TESTS: dict[Any, Callable[[str], bool]] = {
    c.CATEGORY_DIGIT: str.isdigit,
    c.CATEGORY_SPACE: str.isspace,
    c.CATEGORY_WORD: _is_word,
}


def _charset(items: _Items) -> frozenset[str]:
    members: set[str] = set()
    negate = False
    for op, av in items:
        if op is c.NEGATE:
            negate = True
        elif op is c.LITERAL:
            members.add(chr(av))
        elif op is c.RANGE:
            members |= {ch for ch in _ALPHABET if av[0] <= ord(ch) <= av[1]}
        elif op is c.CATEGORY:
            members |= _category(av)
        else:
            members |= _ALPHABET
    return frozenset(_ALPHABET - members if negate else members)


def _category(code: Any) -> set[str]:
    for base, test in _CATEGORY_TESTS.items():
        if code is base:
            return {ch for ch in _ALPHABET if test(ch)}
    # The NOT_ variants, and anything unknown, may start with almost anything.
    return set(_ALPHABET)


def _trial(compiled: re.Pattern[str], pattern: str) -> None:
    flood_chars = sorted({ch for ch in pattern if ch in _ALPHABET and ch.isalnum()} | set(_DEFAULT_FLOOD_CHARS))
    spent = 0.0
    for length in TRIAL_LENGTHS:
        for ch in flood_chars:
            for breaker in _BREAK_CHARS:
                subject = ch * length + breaker
                # CPU time of this thread: time spent waiting for the GIL while other requests run
                # must not count against the pattern.
                started = time.thread_time()
                compiled.fullmatch(subject)
                elapsed = time.thread_time() - started
                if elapsed > TRIAL_BUDGET_SECONDS:
                    raise UnsafePatternError(f"a trial match against {len(subject)} characters ran too long")
                spent += elapsed
                # Many trials each just under the budget would cost as much as one slow one.
                if spent > TRIAL_TOTAL_BUDGET_SECONDS:
                    raise UnsafePatternError("its trial matches together ran too long")
