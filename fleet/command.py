"""What running a command on a host means, whatever the transport.

The options (`ExecOptions`), how `sudo` and the environment wrap a command
(`build_invocation`), the capped output buffer, and how a result is built from an exit
code and streams (`Clock`). Imports no transport: `fleet.ssh` and `fleet.local` build on
this module, and `fleet.execute` dispatches between them.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from fleet.errors import ConfigError
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status, utc_now
from fleet.settings import DEFAULTS, Settings
from fleet.stdin_env import inline_exports, new_marker, payload, reader_script, split_env

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: How an `--env` value is shown wherever options are written down (messages, the run
#: record, reports): the value itself is staged in the run store (fleet.runenv).
REDACTED = "***"

#: After a command exits, how long to keep reading streams that its background
#: children may hold open forever (`sleep 30 &`): the command's own exit decides,
#: over SSH and locally alike.
EOF_GRACE = 2.0


#: Options naming files of one machine: never in a task message; each worker uses its
#: own (`fleet.worker.exec_options`), configured once when it starts.
MACHINE_LOCAL_FIELDS = ("known_hosts", "user_known_hosts", "ssh_config")


@dataclass(frozen=True, slots=True)
class ExecOptions:
    """How to run a command on a host. Travels in task messages, so it holds no secret.

    `env` holds values only in the submitting process: `to_dict` (the task message, the
    run record) keeps its names with `REDACTED` values, and the worker takes the values
    from the run store by run id (`fleet.runenv`). `env_from` maps a NAME to a variable of
    the worker's own environment (a reference, resolved there, never a value).
    """

    command_timeout: float = DEFAULTS.command_timeout
    connect_timeout: float = DEFAULTS.connect_timeout  # TCP connect + banner + key exchange
    auth_timeout: float = DEFAULTS.auth_timeout
    output_cap: int = DEFAULTS.output_cap  # bytes kept per stream
    known_hosts: str | None = None  # fleet's own known_hosts file (FLEET_KNOWN_HOSTS)
    user_known_hosts: str | None = "~/.ssh/known_hosts"
    ssh_config: str | None = "~/.ssh/config"  # None or "none": ignore
    accept_new_host_keys: bool = False
    become: bool | None = None  # None: the host's own `become`
    become_user: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    env_from: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        bad = invalid_env_names(self.env) + invalid_env_names(self.env_from)
        bad += [repr(v) for v in self.env_from.values() if not _ENV_NAME.match(str(v))]
        if bad:
            raise ConfigError(f"invalid environment variable name(s): {', '.join(bad)}")
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "env_from", MappingProxyType(dict(self.env_from)))

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ExecOptions:
        """Options from resolved settings; keyword overrides win. Raises `ConfigError`."""
        values: dict[str, Any] = {
            "command_timeout": settings.command_timeout,
            "connect_timeout": settings.connect_timeout,
            "auth_timeout": settings.auth_timeout,
            "output_cap": settings.output_cap,
            "known_hosts": settings.known_hosts or None,
            "accept_new_host_keys": settings.accept_new_host_keys,
        }
        if settings.ssh_config:
            values["ssh_config"] = settings.ssh_config
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown exec option(s): {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)

    @property
    def ssh_config_path(self) -> str | None:
        if not self.ssh_config or self.ssh_config.lower() == "none":
            return None
        return self.ssh_config

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the `env` values `REDACTED` (names only)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["env"] = dict.fromkeys(self.env, REDACTED)
        data["env_from"] = dict(self.env_from)
        return data

    def to_message(self) -> dict[str, Any]:
        """What a task message carries: `to_dict` without `MACHINE_LOCAL_FIELDS`."""
        data = self.to_dict()
        for name in MACHINE_LOCAL_FIELDS:
            data.pop(name, None)
        return data

    def with_machine_files(self, local: ExecOptions) -> ExecOptions:
        """These options with `local`'s known_hosts and ssh config."""
        return replace(self, **{name: getattr(local, name) for name in MACHINE_LOCAL_FIELDS})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecOptions:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["env"] = dict(values.get("env") or {})
        values["env_from"] = dict(values.get("env_from") or {})
        return cls(**values)


def invalid_env_names(env: Mapping[str, str]) -> list[str]:
    """Names that are not shell identifiers: they would be code, not a variable."""
    return [repr(name) for name in env if not _ENV_NAME.match(str(name))]


@dataclass(frozen=True, slots=True)
class Invocation:
    """The command as it will be run: argv for a POSIX shell, whether sudo wraps it, and
    the environment values to write to its stdin (`fleet.stdin_env`; never in argv)."""

    argv: tuple[str, ...]
    become: bool
    sudo_password_env: str | None
    env_payload: bytes = field(default=b"", repr=False)

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


def build_invocation(host: Host, command: str, options: ExecOptions) -> Invocation:
    """Wrap `command` with its environment and, if asked, `sudo`.

    The environment is set inside the script (sshd's AcceptEnv usually drops variables
    sent over the protocol, and sudo resets the environment): its values are read from
    stdin (`Invocation.env_payload`, `fleet.stdin_env`), so none is in the argv a local
    user of the host sees with ps; only fleet's own `FLEET_RUN_ID` and `FLEET_HOST` are
    exported inline. Raises `ConfigError` for an environment name that is not an
    identifier, a NUL byte in a value, or values over `fleet.stdin_env.MAX_ENV_BYTES`.
    """
    env = {**host.env, **options.env}
    bad = invalid_env_names(env)
    if bad:
        raise ConfigError(f"invalid environment variable name(s): {', '.join(bad)}")
    inline, piped = split_env(env)
    env_payload = b""
    script = inline_exports(inline) + command
    if piped:
        marker = new_marker()
        env_payload = payload(piped, marker)
        script = inline_exports(inline) + reader_script(marker) + command
    argv: tuple[str, ...] = ("/bin/sh", "-c", script)
    become = host.become if options.become is None else options.become
    if not become:
        return Invocation(argv, False, None, env_payload)
    password_env = host.become_password_env
    # -n: never prompt (a prompt would hang until the timeout); with a password
    # reference, -S reads it from stdin, which is closed right after.
    sudo: tuple[str, ...] = ("sudo", "-S", "-p", "") if password_env else ("sudo", "-n")
    if password_env and not piped:
        # sudo does not read stdin when it needs no password (NOPASSWD, cached
        # credentials): the command would read the password instead and could print
        # it. Its own stdin is /dev/null, whatever sudo did with ours (the reader of
        # the environment values skips the password line and ends the same way).
        argv = ("/bin/sh", "-c", f"exec </dev/null; {script}")
    user = options.become_user or host.become_user
    if user:
        sudo += ("-u", user)
    return Invocation((*sudo, "--", *argv), True, password_env, env_payload)


_SIGNAL_NAME = re.compile(r"[A-Za-z0-9@._+-]{1,40}")


def signal_label(name: str) -> str:
    """A signal's name as RFC 4254 section 6.10 writes it (``KILL``, not ``SIGKILL``).

    The name comes from the host (sshd's "exit-signal"): anything but a short name of
    letters, digits and ``@._+-`` (``XCPU@openssh.com`` is one) is shown as ``?``.
    """
    name = name.removeprefix("SIG") if name.startswith("SIG") and len(name) > 3 else name
    return name if _SIGNAL_NAME.fullmatch(name) else "?"


class CappedBuffer:
    """Keeps the first `cap` bytes of a stream and counts all of them."""

    __slots__ = ("_chunks", "cap", "kept", "total")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = 0
        self.total = 0
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - self.kept
        if room > 0:
            piece = data[:room]
            self._chunks.append(piece)
            self.kept += len(piece)

    @property
    def truncated(self) -> bool:
        return self.total > self.kept

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")


def streams(stdout: CappedBuffer, stderr: CappedBuffer) -> dict[str, Any]:
    """A result's output fields from both streams' buffers (text as kept, flags, sizes)."""
    return {
        "stdout": stdout.text(),
        "stderr": stderr.text(),
        "stdout_truncated": stdout.truncated,
        "stderr_truncated": stderr.truncated,
        "stdout_bytes": stdout.total,
        "stderr_bytes": stderr.total,
        "stdout_kept_bytes": stdout.kept,
        "stderr_kept_bytes": stderr.kept,
    }


class Clock:
    """Start time of one host's work, for the result's times and duration."""

    __slots__ = ("started_at", "t0")

    def __init__(self) -> None:
        self.started_at = utc_now()
        self.t0 = time.monotonic()

    def result(self, host: Host, status: Status, **values: Any) -> HostResult:
        return HostResult(
            host=host.name,
            status=status,
            address=host.address,
            started_at=self.started_at,
            finished_at=utc_now(),
            duration_s=round(time.monotonic() - self.t0, 4),
            **values,
        )

    def finished(
        self,
        host: Host,
        *,
        exit_code: int | None,
        stdout: CappedBuffer,
        stderr: CappedBuffer,
        timed_out: bool,
        timeout: float,
        kill_confirmed: bool | None = None,
        kill_note: str = "",
        connection_reused: bool = False,
        exit_signal: str | None = None,
    ) -> HostResult:
        """The result of a command that started, from its exit code and streams;
        `exit_signal` names the signal that ended it (``KILL``; then no exit code)."""
        error: str | None = None
        if timed_out:
            status = Status.TIMEOUT
            error = f"command timed out after {timeout:g} s"
            if kill_note:
                error += f"; {kill_note}"
        elif exit_code == 0:
            status = Status.OK
        else:
            status = Status.FAILED
            if exit_signal is not None:
                error = f"killed by signal {exit_signal}"
            elif exit_code is None:
                error = "the command ended without an exit status (killed by a signal?)"
            else:
                error = f"exit code {exit_code}"
        return self.result(
            host,
            status,
            exit_code=exit_code,
            **streams(stdout, stderr),
            error=error,
            connection_reused=connection_reused,
            remote_kill_confirmed=kill_confirmed if timed_out else None,
            exit_signal=None if timed_out else exit_signal,
        )
