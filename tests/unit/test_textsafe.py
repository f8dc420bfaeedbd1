"""make_visible: host text cannot drive the operator's terminal."""

from __future__ import annotations

import re

import pytest

from fleet.textsafe import has_unsafe, make_visible, make_visible_line

# Anything a terminal could act on, after make_visible.
ACTIONABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def test_plain_text_is_returned_unchanged() -> None:
    text = "load average: 0.01\n\tindented ünïcødé ✓ 日本\n"
    assert make_visible(text) is text
    assert not has_unsafe(text)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
        ("\x9b31m", "\\x9b31m"),  # one-byte CSI
        ("a\rb", "a\\rb"),
        ("\x00\x7f\x85", "\\x00\\x7f\\x85"),
        ("\x08", "\\x08"),
        ("abc\u202edef", "abc\\u202edef"),
        ("\u2066x\u2069", "\\u2066x\\u2069"),
        ("\u202a\u202b\u202c\u202d", "\\u202a\\u202b\\u202c\\u202d"),
        ("\udcff", "\\udcff"),  # a lone surrogate could not even be encoded
    ],
)
def test_controls_become_visible_escapes(raw: str, shown: str) -> None:
    assert make_visible(raw) == shown
    assert has_unsafe(raw)


def test_newlines_and_tabs_are_kept_in_output() -> None:
    assert make_visible("a\n\tb\n") == "a\n\tb\n"


def test_line_variant_escapes_newlines_tabs_and_line_separators() -> None:
    assert make_visible_line("web01\nFAKE ok") == "web01\\nFAKE ok"
    assert make_visible_line("a\tb\u2028c") == "a\\tb\\u2028c"
    assert make_visible_line("\x1b[31m") == "\\x1b[31m"


def test_every_dangerous_range_is_safe_afterwards() -> None:
    text = "".join(chr(c) for c in [*range(0x3000), *range(0xD800, 0xE000)])
    shown = make_visible(text)
    assert not ACTIONABLE.search(shown)
    shown.encode("utf-8")  # no lone surrogate left, either
    assert not ACTIONABLE.search(make_visible_line(text))
    assert "\n" not in make_visible_line(text)


def test_escapes_are_stable() -> None:
    once = make_visible("\x1b[0m\r\u202e")
    assert make_visible(once) == once


def test_exception_line_is_one_visible_line_or_the_type_name() -> None:
    from fleet.textsafe import exception_line

    assert exception_line(ValueError("bad\nsecond line")) == "bad"
    assert exception_line(ValueError("\x1b]52;c;eA==\x07 evil")) == "\\x1b]52;c;eA==\\x07 evil"
    assert exception_line(OSError()) == "OSError"
    assert exception_line(ValueError("\n\n")) == "ValueError"
    assert len(exception_line(ValueError("x" * 500), limit=50)) == 50
