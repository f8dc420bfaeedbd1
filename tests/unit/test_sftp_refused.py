"""Opening SFTP on a pooled transport (fleet.ssh.sftp.open_sftp via fleet.ssh._open), with
fakes: a refusal on a live transport is the host's answer (`error`, the transport kept for
the other threads using it); only a transport that is down is discarded."""

from __future__ import annotations

from typing import Any

import paramiko
import pytest

from fleet.command import ExecOptions
from fleet.inventory.hosts import Host
from fleet.results import Status
from fleet.ssh import ConnectionPool, _prepare, put_file
from fleet.ssh.pool import Lease
from fleet.ssh.sftp import SUBSYSTEM_REFUSED

HOST = Host(name="web01", address="10.0.0.1", port=22, user="deploy")
OPTIONS = ExecOptions(
    connect_timeout=0.3,
    auth_timeout=0.5,
    command_timeout=0.5,
    known_hosts=None,
    user_known_hosts=None,
    ssh_config=None,
)


class Channel:
    """A session channel; `subsystem` is what the subsystem request does, `reply`
    what the SFTP server's version reply does (an exception or the bytes)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.closed = False

    def settimeout(self, timeout: Any) -> None: ...

    def close(self) -> None:
        self.closed = True

    def invoke_subsystem(self, name: str) -> None:
        assert name == "sftp"
        if self.transport.subsystem is not None:
            self.transport.subsystem(self.transport)

    def send(self, data: bytes) -> int:
        return len(data)

    def recv(self, n: int) -> bytes:
        reply: bytes | BaseException = self.transport.reply
        if isinstance(reply, BaseException):
            raise reply
        return reply


class Transport:
    def __init__(self, subsystem: Any, reply: Any, open_error: BaseException | None) -> None:
        self.subsystem = subsystem
        self.reply = reply
        self.open_error = open_error
        self.active = True
        self.closes = 0
        self.channels: list[Channel] = []

    def is_active(self) -> bool:
        return self.active

    def open_session(self, timeout: Any = None) -> Channel:
        if self.open_error is not None:
            raise self.open_error
        self.channels.append(Channel(self))
        return self.channels[-1]

    def close(self) -> None:
        self.closes += 1
        self.active = False


class Connector:
    def __init__(
        self, subsystem: Any = None, reply: Any = b"", open_error: BaseException | None = None
    ) -> None:
        self.made: list[Transport] = []
        self.kw = {"subsystem": subsystem, "reply": reply, "open_error": open_error}

    def open_socket(self, target: Any, options: Any) -> object:
        return object()

    def connect(self, target: Any, sock: Any, options: Any) -> Transport:
        self.made.append(Transport(**self.kw))
        return self.made[-1]


def refuse(transport: Transport) -> None:
    # What paramiko 5.1 raises when sshd answers CHANNEL_FAILURE to the request.
    raise paramiko.SSHException("Channel closed.")


def die(transport: Transport) -> None:
    transport.active = False
    raise EOFError


def busy_pool(connector: Connector) -> tuple[ConnectionPool, Lease]:
    """A pool whose one transport is lent to another thread's running command."""
    pool = ConnectionPool(connector=connector)  # type: ignore[arg-type]
    return pool, pool.acquire(_prepare(HOST, OPTIONS), OPTIONS)


@pytest.mark.parametrize(
    ("connector", "words"),
    [
        (Connector(subsystem=refuse), SUBSYSTEM_REFUSED),
        (Connector(reply=b""), "SFTP subsystem failed to start on the server (EOF during"),
    ],
    ids=["subsystem-refused", "sftp-server-exits"],
)
def test_refused_sftp_on_a_live_transport_is_an_error_and_keeps_it(
    connector: Connector, words: str
) -> None:
    pool, busy = busy_pool(connector)
    result = put_file(HOST, b"data", "/tmp/x", 0o600, OPTIONS, pool=pool)
    assert result.status is Status.ERROR, result
    assert result.error is not None and result.error.startswith(words), result.error
    [shared] = connector.made  # no second connection was tried
    assert shared.closes == 0 and shared.is_active()
    assert all(channel.closed for channel in shared.channels)
    assert len(pool) == 1
    # The lease was given back: the other thread's lease and a new one share it.
    pool.release(busy)
    again = pool.acquire(_prepare(HOST, OPTIONS), OPTIONS)
    assert again.transport is shared and again.reused
    pool.release(again)
    pool.close()


def test_sftp_on_a_transport_that_died_discards_it() -> None:
    connector = Connector(subsystem=die)
    pool, busy = busy_pool(connector)
    result = put_file(HOST, b"data", "/tmp/x", 0o600, OPTIONS, pool=pool)
    # The pooled transport was dead: replaced once; the new one died too.
    assert result.status is Status.UNREACHABLE, result
    assert "connection lost before the command started" in (result.error or "")
    assert len(connector.made) == 2 and all(t.closes == 1 for t in connector.made)
    assert len(pool) == 0
    pool.release(busy)


def test_unanswered_sftp_negotiation_retires_the_transport_without_closing_it() -> None:
    connector = Connector(reply=TimeoutError("timed out"))
    pool, busy = busy_pool(connector)
    result = put_file(HOST, b"data", "/tmp/x", 0o600, OPTIONS, pool=pool)
    assert result.status is Status.TIMEOUT, result
    assert "did not answer the request to start the session" in (result.error or "")
    [shared] = connector.made
    assert shared.closes == 0  # the other thread's command still runs on it
    pool.release(busy)  # its last user: now it is closed
    assert shared.closes == 1 and len(pool) == 0


def test_unopened_session_on_a_live_transport_is_tried_elsewhere_not_discarded() -> None:
    # paramiko's bare "Unable to open channel." (e.g. MaxSessions): as for a command.
    connector = Connector(open_error=paramiko.SSHException("Unable to open channel."))
    pool, busy = busy_pool(connector)
    result = put_file(HOST, b"data", "/tmp/x", 0o600, OPTIONS, pool=pool)
    assert result.status is Status.ERROR, result
    assert "the host refused a new session channel" in (result.error or "")
    assert len(connector.made) == 2 and all(t.closes == 0 for t in connector.made)
    pool.release(busy)
    pool.close()
