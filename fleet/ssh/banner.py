"""Why an SSH handshake ended before it began, in an operator's words.

paramiko reports "Error reading SSH protocol banner" alike for a peer that closed at
once, one that stayed silent past the banner timeout, and one that is not an SSH server
at all (PITFALLS). `BannerWatch` wraps the socket (or a jump host's channel) handed to
paramiko and keeps the first bytes the peer sent, so `banner_failure` can tell the
three apart; once the handshake is over it only forwards.
"""

from __future__ import annotations

import time
from typing import Any

from fleet.results import Status
from fleet.ssh.errors import ConnectFailure
from fleet.textsafe import make_visible_line

HEAD_BYTES = 256  # what is kept of the peer's first bytes, to quote a non-SSH answer
_QUOTED = 60
#: What OpenSSH's sshd (8.x on) writes before closing a connection it drops because of
#: `MaxStartups` (sshd.c, drop_connection).
MAX_STARTUPS_ANSWER = b"Exceeded MaxStartups"


class BannerWatch:
    """A socket-like object over `sock` remembering the first `HEAD_BYTES` received."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.head = b""
        self.started = time.monotonic()

    def recv(self, size: int) -> bytes:
        data: bytes = self.sock.recv(size)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def banner_failure(watch: BannerWatch, where: str, timeout: float, seconds: str) -> ConnectFailure:
    """The failure of a handshake that got no SSH banner from `where` (``addr:port``).

    `seconds` is `timeout` as the message shows it.
    """
    head = watch.head
    if head.startswith(MAX_STARTUPS_ANSWER):
        return ConnectFailure(
            Status.UNREACHABLE,
            f"{where} refused the connection: too many unauthenticated connections at "
            "once (sshd MaxStartups; see FLEET_HANDSHAKES_PER_TARGET)",
        )
    if head and not head.startswith(b"SSH-") and b"\nSSH-" not in head:
        first = head.splitlines()[0] if head.strip() else head
        quoted = make_visible_line(first.decode("utf-8", "replace"))[:_QUOTED]
        return ConnectFailure(
            Status.UNREACHABLE, f"{where} is not an SSH server (it answered {quoted!r})"
        )
    waited = time.monotonic() - watch.started
    if not head and waited < timeout * 0.9:
        return ConnectFailure(
            Status.UNREACHABLE, f"{where} closed the connection before sending an SSH banner"
        )
    return ConnectFailure(Status.UNREACHABLE, f"no SSH banner within {seconds} from {where}")
