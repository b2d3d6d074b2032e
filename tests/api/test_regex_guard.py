"""The pattern guard on its own: what it accepts, and why it refuses what it refuses."""

from __future__ import annotations

import time

import pytest

from models.errors import InvalidRequestError
from models.regex_guard import check_pattern

SAFE = [
    ".*",
    "orders\\..*",
    "^topic-[0-9]+$",
    "(foo|bar)+",
    "(\\d{3}-)+x",
    "__consumer.*",
    "[a-z]+-(dev|prod)",
    "(ab|ac)*",
    "payments|refunds",
]


@pytest.mark.parametrize("pattern", SAFE)
def test_ordinary_patterns_are_accepted_quickly(pattern: str) -> None:
    started = time.perf_counter()
    check_pattern(pattern, "topicsToReplicate[0]")
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(a+)+", "nests a variable repetition"),
        ("(a*)*", "nests a variable repetition"),
        ("(\\w+\\d?)*", "nests a variable repetition"),
        ("(.*,){6}x", "nests a variable repetition"),
        ("(a|a)*", "can both match the empty string"),
        ("(\\d|1x)*", "can start with the same character"),
        ("((x)|(x))+y", "can start with the same character"),
        # No nesting and no alternatives, yet polynomial backtracking of degree 8: only the trial sees it.
        ("x*x*x*x*x*x*x*x*y", "trial match"),
        ("[", "not a valid regular expression"),
        ("(?P<a>x)(?P<a>y)", "not a valid regular expression"),
    ],
)
def test_unsafe_or_invalid_patterns_are_refused_naming_the_member(pattern: str, reason: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidRequestError) as error:
        check_pattern(pattern, "topicsToExclude[3]")

    assert error.value.parameter == "topicsToExclude[3]"
    assert error.value.message.startswith("topicsToExclude[3]: ")
    assert reason in error.value.message
    assert time.perf_counter() - started < 2
