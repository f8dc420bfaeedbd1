"""Fault stubs: hosts that refuse, hang, or stall after the SSH banner.

Each listener runs in a daemon thread and stops cleanly (`stop()` or `with`). They bind
127.0.1.x by default, far from the sshd hosts (127.0.0.2 upward).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass

from tests.harness import procs

STUB_ADDRESS = "127.0.1.1"
SSH_BANNER = b"SSH-2.0-OpenSSH_9.2\r\n"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int


def refused_port(address: str = STUB_ADDRESS) -> Endpoint:
    """A port with nothing listening: connecting gets ECONNREFUSED at once."""
    return Endpoint(address, procs.free_port(address))


class HungListener:
    """Accepts TCP connections and never sends a byte (a hung host)."""

    greeting = b""
    close_at_once = False

    def __init__(self, address: str = STUB_ADDRESS) -> None:
        self._server = socket.create_server((address, 0), backlog=128)
        self._server.settimeout(0.1)
        self.address = address
        self.port: int = self._server.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.address, self.port)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            # Keep the socket open (and unread) so the client sees silence, not a close.
            self._conns.append(conn)
            if self.greeting:
                with contextlib.suppress(OSError):
                    conn.sendall(self.greeting)
            if self.close_at_once:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2.0)
        self._server.close()
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def __enter__(self) -> HungListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BannerStaller(HungListener):
    """Sends an OpenSSH banner, then nothing: stalls key exchange."""

    greeting = SSH_BANNER


class ClosingListener(HungListener):
    """Accepts TCP connections and closes them at once, before any banner."""

    close_at_once = True


class NotSSHListener(HungListener):
    """Answers like a web server, not an SSH server, then closes."""

    greeting = b"HTTP/1.1 400 Bad Request\r\nServer: \x1b[31mnginx\r\n\r\n"
    close_at_once = True
