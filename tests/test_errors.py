"""`pinproxy.errors.quote` / `shorten`: the one way a message echoes a user's value."""

from __future__ import annotations

import pytest

from pinproxy.errors import QUOTE_LIMIT, quote, shorten

LONGEST_NAME = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters: a valid DNS name


@pytest.mark.parametrize(("text", "quoted", "bare"), [
    ("a.test", "'a.test'", "a.test"),
    ("", "''", ""),
    ("tab\there", "'tab\\there'", "tab\there"),  # escapes keep one line
    (LONGEST_NAME, repr(LONGEST_NAME), LONGEST_NAME),  # any valid value is shown whole
    ("x" * QUOTE_LIMIT, repr("x" * QUOTE_LIMIT), "x" * QUOTE_LIMIT),
    ("x" * (QUOTE_LIMIT + 1), repr("x" * QUOTE_LIMIT) + f"...[cut: {QUOTE_LIMIT + 1} characters]",
     "x" * QUOTE_LIMIT + f"...[cut: {QUOTE_LIMIT + 1} characters]"),
])
def test_quote_and_shorten(text: str, quoted: str, bare: str) -> None:
    assert quote(text) == quoted
    assert shorten(text) == bare


def test_a_50_mb_value_makes_a_short_message() -> None:
    text = "a" * 50_000_000
    assert len(quote(text)) < QUOTE_LIMIT + 40
    assert quote(text).endswith("...[cut: 50000000 characters]")
    assert quote(text, limit=5) == "'aaaaa'...[cut: 50000000 characters]"
