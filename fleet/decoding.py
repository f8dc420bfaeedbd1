"""Checked decoding of the plain dicts that come back from outside (the run store).

Whoever can write to Redis can put anything in a stored record, so a record is data
to check, never to trust: `decode_fields` checks every field of a dataclass against
its annotation (``int | None`` is an int or null and never a bool, ``tuple[str, ...]``
a list of strings, ...) or against a stricter `Check` given by name (a time is an ISO
8601 timestamp, a count a non-negative int), and raises `CorruptRecordError` naming
the record and the field for the first value that is wrong. Keys the dataclass does not
know are ignored (a newer fleet may have written them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from typing import Any

from fleet.errors import CorruptRecordError
from fleet.textsafe import show_value

#: Longest timestamp accepted (an ISO 8601 time with microseconds and an offset is 32).
MAX_TIME_CHARS = 64


@dataclass(frozen=True, slots=True)
class Check:
    """What a field must hold: `expected` (for the message), `accepts`, and `convert`
    (the value as the dataclass holds it, e.g. a list as a tuple)."""

    expected: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda value: value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_time(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > MAX_TIME_CHARS:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def optional(check: Check) -> Check:
    """`check`, or null."""
    return Check(
        f"{check.expected} or null",
        lambda v: v is None or check.accepts(v),
        lambda v: None if v is None else check.convert(v),
    )


def one_of(values: Callable[[Any], Any], names: str) -> Check:
    """A string that `values` (an Enum class) accepts, converted by it."""

    def accepts(value: Any) -> bool:
        try:
            values(value)
        except ValueError:
            return False
        return isinstance(value, str)

    return Check(f"one of {names}", accepts, values)


TEXT = Check("a string", lambda v: isinstance(v, str))
BOOL = Check("true or false", lambda v: isinstance(v, bool))
INT = Check("an integer", _is_int)
COUNT = Check("a non-negative integer", lambda v: _is_int(v) and v >= 0)
NUMBER = Check("a finite number", _is_number, float)
SECONDS = Check("a non-negative number of seconds", lambda v: _is_number(v) and v >= 0, float)
TIME = Check("an ISO 8601 timestamp", _is_time)
NAMES = Check("a list of strings", _is_str_list, tuple)
NAME_LISTS = Check(
    "a list of lists of strings",
    lambda v: isinstance(v, list | tuple) and all(_is_str_list(x) for x in v),
    lambda v: tuple(tuple(x) for x in v),
)
MAPPING = Check(
    "a mapping with string keys",
    lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    dict,
)

#: The check for each annotation (as the source spells it) a stored dataclass uses.
BY_ANNOTATION: dict[str, Check] = {
    "str": TEXT,
    "str | None": optional(TEXT),
    "bool": BOOL,
    "bool | None": optional(BOOL),
    "int": INT,
    "int | None": optional(INT),
    "float": NUMBER,
    "float | None": optional(NUMBER),
    "tuple[str, ...]": NAMES,
    "tuple[tuple[str, ...], ...]": NAME_LISTS,
    "Mapping[str, Any]": MAPPING,
}


def field_checks(cls: type, overrides: Mapping[str, Check]) -> dict[str, Check]:
    """A check for every field of dataclass `cls`: `overrides` by name, else by annotation.

    Raises `TypeError` for a field with neither (a field added without its check; the
    unit tests build every stored type's checks, so this shows up there).
    """
    checks = {}
    for f in fields(cls):
        check = overrides.get(f.name) or BY_ANNOTATION.get(str(f.type))
        if check is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no decoding check for {f.type!r}")
        checks[f.name] = check
    return checks


def decode_fields(kind: str, cls: type, data: Any, checks: Mapping[str, Check]) -> dict[str, Any]:
    """The constructor arguments of dataclass `cls` from `data`, every field checked.

    `kind` names the record in messages (``host result``). Raises `CorruptRecordError`
    (a `ValueError`) when `data` is not a mapping, a required field is missing, or a
    field holds a value its check refuses: ``host result: exit_code: expected an
    integer or null, got '<script>'``.
    """
    if not isinstance(data, Mapping):
        raise CorruptRecordError(f"{kind}: expected a JSON object, got {show_value(data)}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise CorruptRecordError(f"{kind}: {f.name}: missing")
            continue
        value = data[f.name]
        check = checks[f.name]
        if not check.accepts(value):
            raise CorruptRecordError(
                f"{kind}: {f.name}: expected {check.expected}, got {show_value(value)}"
            )
        values[f.name] = check.convert(value)
    return values
