"""Making host-provided text safe to show an operator.

A host decides what its command prints, so its output is attacker-controlled text.
Printed raw, ``\\x1b]0;...`` retitles the terminal, ``\\x1b[2J`` clears it, ``\\r``
overwrites what came before on the line and a bidi override (U+202E) shows text
in another order than it is stored. Every string a host gave us (output, error
messages, even its name, which comes from an inventory someone else may edit) goes
through `make_visible` (multi-line text) or `make_visible_line` (one table cell, one
message line) before it reaches a terminal, a report file or a log; `show_value`
quotes a value from a file (an inventory key or value) for a one-line message.
"""

from __future__ import annotations

import re
import reprlib

# C0 controls except \t and \n, DEL, C1 controls (\x9b is a one-byte CSI on some
# terminals), the bidi embeddings/overrides/isolates, and lone surrogates (which
# cannot be encoded to UTF-8, so printing them would raise instead of showing them).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# A single-line field must not be able to start a forged line either.
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def make_visible(text: str) -> str:
    """`text` with every control character shown as an escape (``\\x1b``, ``\\r``, ``\\u202e``).

    Newlines and tabs are kept: this is for multi-line output. Never raises.
    """
    if not _UNSAFE.search(text):
        return text  # the common case: no copy
    return _UNSAFE.sub(_escape, text)


def make_visible_line(text: str) -> str:
    """Like `make_visible`, but newlines and tabs are escaped too: for one-line fields
    (host names, error messages, table cells) that must not forge extra lines."""
    if not _UNSAFE_LINE.search(text):
        return text
    return _UNSAFE_LINE.sub(_escape, text)


def has_unsafe(text: str) -> bool:
    """True when `make_visible` would change `text`."""
    return _UNSAFE.search(text) is not None


def exception_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of `exc`'s message (its type name when it has none), at most
    `limit` characters, made visible: for one-line error messages that pass a library's
    (or a server's) words on."""
    lines = str(exc).strip().splitlines()
    return make_visible_line(lines[0][:limit]) if lines else type(exc).__name__


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlevel, _repr.maxlist, _repr.maxdict = 2, 4, 3


def show_value(value: object) -> str:
    """`value` quoted for a one-line message (a file's key or value): its repr, at most
    about 60 characters, with any control character escaped."""
    text = make_visible_line(_repr.repr(value))
    return text if len(text) <= 60 else text[:57] + "..."
