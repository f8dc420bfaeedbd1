"""Errors raised by fleet's library code.

The CLI alone turns them into one-line messages and exit codes::

    FleetError                      base of everything fleet raises on purpose
    ├── UsageError                  bad flag or argument combination        (exit 2)
    ├── InventoryError              inventory file cannot be used           (exit 2)
    │   └── PatternError            a pattern names nothing / is malformed  (exit 2)
    ├── ConfigError                 bad setting or environment value        (exit 2)
    ├── RunNotFoundError            no run with that id (or it expired)     (exit 2)
    ├── SSHError                    SSH layer trouble that is not a host's  (exit 3)
    └── BackendError                broker or run store unreachable         (exit 3)
        └── CorruptRecordError      a stored record is malformed (a ValueError) (exit 3)

A host's own trouble (refused, auth failure, timeout, non-zero exit) is never an
exception: it is a status in its ``HostResult``.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_HOSTS_FAILED = 1
EXIT_USAGE = 2
EXIT_INFRASTRUCTURE = 3
EXIT_INTERRUPTED = 130
#: The reader of stdout went away (``fleet hosts | head -1``): a shell's 128 + SIGPIPE.
EXIT_BROKEN_PIPE = 141


class FleetError(Exception):
    """Base class. ``exit_code`` tells the CLI which code to return."""

    exit_code = EXIT_USAGE


class UsageError(FleetError):
    exit_code = EXIT_USAGE


@dataclass(frozen=True, slots=True)
class InventoryProblem:
    """One problem found in an inventory file, with the key path that holds it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InventoryError(FleetError):
    """The inventory cannot be used. Carries every problem found, not just the first."""

    exit_code = EXIT_USAGE

    def __init__(self, file: str, problems: list[InventoryProblem] | InventoryProblem) -> None:
        self.file = file
        self.problems = tuple(problems) if isinstance(problems, list) else (problems,)
        super().__init__(self.render())

    @property
    def key_path(self) -> str:
        return self.problems[0].path

    def render(self) -> str:
        return "\n".join(f"{self.file}: {p}" for p in self.problems)


class PatternError(FleetError):
    exit_code = EXIT_USAGE


class ConfigError(FleetError):
    exit_code = EXIT_USAGE


class RunNotFoundError(FleetError):
    exit_code = EXIT_USAGE


class SSHError(FleetError):
    exit_code = EXIT_INFRASTRUCTURE


class BackendError(FleetError):
    """The broker or the run store cannot be reached. The message names the URL, redacted."""

    exit_code = EXIT_INFRASTRUCTURE


class CorruptRecordError(BackendError, ValueError):
    """A record read back from the run store is malformed or has a field of the wrong
    type (tampered, or written by something else). The message names the field."""
