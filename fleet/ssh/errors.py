"""The one internal exception of the SSH layer: a host's trouble, already in words.

It never leaves `fleet.ssh`: `run_command` and friends turn it into a `HostResult`.
"""

from __future__ import annotations

from fleet.errors import SSHError
from fleet.results import Status


class ConnectFailure(SSHError):
    """Reaching, verifying or logging in to a host failed; `status` says how."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SessionRefused(SSHError):
    """The server closed or refused a new session before the command started
    (OpenSSH's `MaxSessions` shows up this way as well as a refused channel)."""
