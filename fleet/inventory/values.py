"""Checks of one host variable's value: each returns why a value is wrong, or None.

`VAR_CHECKS` maps every known host variable (`fleet.inventory.hosts.KNOWN_HOST_VARS`) to
its check; any other (free) variable must be JSON (`json_problem`): it travels in task
messages. Messages quote the value with `show_value`, except for secret-like keys.
"""

from __future__ import annotations

import re
from typing import Any

from fleet.inventory.hosts import KNOWN_HOST_VARS
from fleet.textsafe import show_value

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def seconds(value: Any) -> float | None:
    """Seconds in a positive number or a duration like ``90s``, ``5m``, ``1h30m``, ``1d``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if 0 < value < float("inf") else None
    if isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())) and value.strip():
        days, hours, minutes, secs = (int(g or 0) for g in match.groups())
        total = ((days * 24 + hours) * 60 + minutes) * 60 + secs
        return float(total) if total > 0 else None
    return None


def _token(value: Any) -> str | None:
    if (
        isinstance(value, str)
        and value
        and not value.startswith("-")
        and all(c.isprintable() and not c.isspace() for c in value)
    ):
        return None
    return (
        f"expected a string without spaces, control characters or leading '-', got "
        f"{show_value(value)}"
    )


def _path_value(value: Any) -> str | None:
    if isinstance(value, str) and value and value.isprintable():
        return None
    return f"expected a file path, got {show_value(value)}"


def _port(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return None
    return f"expected an integer 1-65535, got {show_value(value)}"


def _connection(value: Any) -> str | None:
    return (
        None if value in ("ssh", "local") else f"expected 'ssh' or 'local', got {show_value(value)}"
    )


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {show_value(value)}"


def _env_name(value: Any) -> str | None:
    if isinstance(value, str) and _ENV_NAME.fullmatch(value):
        return None
    # The value is not shown: a user may have put the password itself here.
    return "expected the NAME of an environment variable on the workers, like DB_PASSWORD"


def _env(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected a mapping of variable names to strings, got {show_value(value)}"
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            return f"{show_value(key)} is not an environment variable name"
        if not isinstance(item, str) or "\0" in item:
            return f"{key}: expected a string (quote numbers), got {show_value(item)}"
    return None


def _env_from(value: Any) -> str | None:
    if not isinstance(value, dict):
        return (
            "expected a mapping of variable names to the NAMES of variables on the workers, "
            f"got {show_value(value)}"
        )
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            return f"{show_value(key)} is not an environment variable name"
        if not isinstance(item, str) or not _ENV_NAME.fullmatch(item):
            # The value is not shown: a user may have put the secret itself here.
            return (
                f"{key}: expected the NAME of an environment variable on the workers, "
                "like DB_PASSWORD"
            )
    return None


def json_problem(value: Any) -> str | None:
    """Free vars travel in JSON task messages: dates, sets or bytes could not."""
    if value is None or isinstance(value, str | int | float | bool):
        return None
    if isinstance(value, list):
        return next((p for p in map(json_problem, value) if p), None)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return next((p for p in map(json_problem, value.values()) if p), None)
    return (
        "expected a string, number, boolean, null, list or mapping with string keys, "
        f"got {show_value(value)}"
    )


VAR_CHECKS = {
    "address": _token,
    "port": _port,
    "user": _token,
    "identity_file": _path_value,
    "password_env": _env_name,
    "connection": _connection,
    "jump": _token,
    "queue": _token,
    "become": _bool,
    "become_user": _token,
    "become_password_env": _env_name,
    "env": _env,
    "env_from": _env_from,
}
assert set(VAR_CHECKS) == KNOWN_HOST_VARS  # a new Host field needs its check here
