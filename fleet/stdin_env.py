"""How a command's environment values reach it over stdin, never through its argv.

A process's argv is world-readable (``ps -eo args``, ``/proc/PID/cmdline``) on the host
that runs it, so an inline ``export NAME=VALUE`` shows every value to any local user.
Instead, the shell that wraps the command reads the values from its stdin first, then
gives the command ``/dev/null`` as stdin (as before: a command that reads stdin sees EOF).

What is sent on stdin (`stdin_bytes`)::

    [sudo password line, then PAD_LINES empty lines]   only with become_password_env
    MARKER                                             a fresh random line per invocation
    export NAME='value'                                one line of shell per value
    ...                                                  (`export_line`)
    MARKER.                                            the end: nothing is run without it

The reader skips every line before the marker: ``sudo -S`` reads the password line
byte by byte when it needs one (sudo's ``tgetpass``), but leaves it unread under
NOPASSWD or cached credentials, so the wrapped shell may see it first; it is skipped,
never evaluated. After a wrong password ``sudo -S`` reads further lines as new tries: the
empty pad lines absorb them, so the values do not become password guesses. Without the
end marker (a payload cut short) the shell exits 125 and runs nothing.

Pure functions; no transport, no I/O. The two variables fleet sets itself
(`INLINE_ENV`: the run id and the host name) are not secret and stay inline.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Mapping

from fleet.errors import ConfigError

#: Set by fleet itself (not secret): exported inline, visible in the process list.
INLINE_ENV = frozenset({"FLEET_RUN_ID", "FLEET_HOST"})
#: Lines sent after the sudo password: absorbed by sudo's retries after a wrong password.
PAD_LINES = 2
#: The values of one command, quoted, at most (bytes): below a pipe's 64 KiB buffer, so
#: writing them to a local command never blocks, whatever the command does.
MAX_ENV_BYTES = 48 * 1024
#: The exit status of a wrapper whose values did not arrive (it runs nothing).
NO_ENV_EXIT = 125


def split_env(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """`env` as (exported inline: `INLINE_ENV`, sent on stdin: the rest)."""
    inline = {k: str(v) for k, v in env.items() if k in INLINE_ENV}
    piped = {k: str(v) for k, v in env.items() if k not in INLINE_ENV}
    return inline, piped


def new_marker() -> str:
    """A line no password, value or command output can be by chance (128 random bits)."""
    return f"FLEET-ENV-{secrets.token_hex(16)}"


def reader_script(marker: str) -> str:
    """Shell code that reads the values framed by `marker` from stdin, exports them, and
    points stdin at /dev/null for what follows. One line (a csh login shell passes it on
    too), POSIX sh (dash, bash, busybox ash)."""
    return (
        f"fleet_m={marker}; fleet_in=; fleet_ok=; "
        "while IFS= read -r fleet_l; do "
        'if [ -n "$fleet_in" ]; then '
        'if [ "$fleet_l" = "$fleet_m." ]; then fleet_ok=1; break; fi; eval "$fleet_l"; '
        'elif [ "$fleet_l" = "$fleet_m" ]; then fleet_in=1; fi; '
        "done; "
        'if [ -z "$fleet_ok" ]; then '
        "echo 'fleet: the environment values did not arrive on stdin; nothing was run' >&2; "
        f"exit {NO_ENV_EXIT}; fi; "
        "unset fleet_m fleet_in fleet_ok fleet_l fleet_v; exec </dev/null; "
    )


def export_line(name: str, value: str) -> str:
    """One line of shell code exporting `value` as `name`, whatever the value holds. A
    value with newlines is spelled with printf escapes (the trailing x keeps the trailing
    newlines a command substitution would strip)."""
    if "\n" not in value:
        return f"export {name}={shlex.quote(value)}"
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n")
    return f'fleet_v=$(printf %bx {shlex.quote(escaped)}); export {name}="${{fleet_v%x}}"'


def payload(env: Mapping[str, str], marker: str) -> bytes:
    """The framed values for `reader_script(marker)`. Raises `ConfigError` when a value
    holds a NUL byte (no environment can) or they exceed `MAX_ENV_BYTES`."""
    lines = [marker]
    for name, value in env.items():
        if "\0" in value:
            raise ConfigError(f"environment variable {name}: its value holds a NUL byte")
        lines.append(export_line(name, value))
    lines.append(f"{marker}.")
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    if len(data) > MAX_ENV_BYTES:
        raise ConfigError(
            f"environment values too large ({len(data)} bytes quoted; limit {MAX_ENV_BYTES})"
        )
    return data


def inline_exports(env: Mapping[str, str]) -> str:
    """``export A='x' B='y'; `` for the not-secret `INLINE_ENV` values ('' for none)."""
    if not env:
        return ""
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; "


def stdin_bytes(env_payload: bytes, sudo_password: bytes | None) -> bytes | None:
    """What to write to the command's stdin: the sudo password line (and its pad), then
    the values; None when there is nothing to send (stdin is closed at once)."""
    head = b""
    if sudo_password is not None:
        head = sudo_password + b"\n" + b"\n" * (PAD_LINES if env_payload else 0)
    data = head + env_payload
    return data or None
