"""One command on one channel: stdin closed, both streams drained, a wall-time deadline.

paramiko's `exec_command(timeout=)` is only a read timeout and `recv_exit_status()`
can deadlock on undrained output, so the drain loop here owns the deadline. The
remote command is wrapped to report its process group first (sshd makes it a
session leader), so a timeout can end it through a second channel: closing a
channel without a pty leaves the remote command running.
"""

from __future__ import annotations

import contextlib
import re
import select
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST

from fleet.command import EOF_GRACE, CappedBuffer, Invocation, signal_label
from fleet.ssh import deadlines
from fleet.ssh.errors import SessionRefused

_MARKER = b"FLEET-PID "
_MARKER_LINE = re.compile(rb"FLEET-PID (\d+)\n")
_MARKER_SEARCH_LIMIT = 64 * 1024
_CHUNK = 65536
# After the exit status arrives, how long to wait for EOF: a daemonised child may
# hold the streams open forever (ssh itself would hang there).
_EOF_GRACE = EOF_GRACE
_KILL_TIMEOUT = 5.0
# bounded_request: how often an expired request is woken, and how long its close
# may take once the request has returned.
_WAKE_INTERVAL = 0.05
_CLOSE_GRACE = 2.0

ChannelOpener = Callable[[float], Any]


def remote_line(invocation: Invocation) -> str:
    """The command line sent to sshd: print our PID (= the process group), then exec."""
    return f"printf 'FLEET-PID %s\\n' \"$$\"; exec {invocation.line}"


class _MarkedStdout:
    """Strips our PID line from stdout and remembers the PID."""

    def __init__(self, out: CappedBuffer) -> None:
        self.out = out
        self.pid: int | None = None
        self._pending: bytes | None = b""

    def feed(self, data: bytes) -> None:
        if self._pending is None:
            self.out.feed(data)
            return
        self._pending += data
        match = _MARKER_LINE.search(self._pending)
        if match:
            self.pid = plausible_pid(match.group(1))
            rest = self._pending[: match.start()] + self._pending[match.end() :]
            self._pending = None
            if rest:
                self.out.feed(rest)
        elif len(self._pending) > _MARKER_SEARCH_LIMIT:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.out.feed(self._pending)
        self._pending = None


def plausible_pid(text: bytes) -> int | None:
    """The reported PID, or None when it cannot be a command's own process group:
    `kill -TERM -1` would signal every process of the user, `-0` the killer's group."""
    pid = int(text)
    return pid if pid > 1 else None


class StartTimeout(Exception):
    """The host did not answer a channel request (exec, subsystem) in time."""


def bounded_request(channel: Any, request: Callable[[], object], timeout: float) -> None:
    """Run a channel request such as `exec_command`: paramiko waits for the server's
    reply with no timeout, so a host that never answers would hold the thread
    forever. At the deadline the channel is closed, which wakes that wait.
    Raises `StartTimeout` then, or what the request raised."""
    lock = threading.Lock()
    state: dict[str, Any] = {"done": False, "expired": False, "closer": None}
    returned = threading.Event()

    def close() -> None:
        # The close fails when the transport died or the caller, already woken, is
        # closing it: there is no one to tell, and no deadline thread may raise.
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            channel.close()

    def close_and_wake() -> None:
        close()
        # paramiko arms the reply event after its "channel open?" check: a close
        # landing between the two is a lost wake-up (the request would wait for a
        # reply that never comes). Keep waking it until the request has returned.
        wake = getattr(channel, "event", None)
        while wake is not None and not returned.wait(_WAKE_INTERVAL):
            wake.set()

    def expire() -> None:
        # On the shared deadline thread: hand the slow part to a thread of its own.
        with lock:
            if state["done"]:
                return
            state["expired"] = True
            thread = threading.Thread(target=close_and_wake, daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: close from here, without the wake loop
                started = False
            else:
                started = True
                state["closer"] = thread
        if not started:
            close()

    deadline = deadlines.call_later(timeout, expire)
    failure: Exception | None = None
    try:
        request()
    except Exception as exc:
        failure = exc
    finally:
        with lock:
            state["done"] = True
            expired, closer = state["expired"], state["closer"]
        returned.set()
        deadline.cancel()
    if expired:
        # The close may still be on its way out: let it go before the caller
        # closes or retires the transport (bounded: a stuck socket must not hold us).
        # (A reply that came as the deadline closed the channel is lost with it.)
        if closer is not None:
            closer.join(_CLOSE_GRACE)
        raise StartTimeout from None
    if failure is not None:
        raise failure


def _handle_request(channel: Any, message: Any) -> None:
    """paramiko's channel-request handler, plus RFC 4254 section 6.10's "exit-signal"
    (signal name without "SIG", core dumped, error message, language), which paramiko
    ignores: the name is kept as ``channel.fleet_exit_signal`` and the status event
    set, as for "exit-status" (sshd sends one or the other when the command ends)."""
    start = message.packet.tell()
    with contextlib.suppress(Exception):  # a malformed request: paramiko's handler says so
        if message.get_text() == "exit-signal":
            message.get_boolean()  # want_reply: answered by paramiko's handler below
            channel.fleet_exit_signal = signal_label(message.get_text())
            channel.status_event.set()
    message.packet.seek(start)
    _PARAMIKO_REQUEST_HANDLER(channel, message)


_PARAMIKO_REQUEST_HANDLER = paramiko.Transport._channel_handler_table[MSG_CHANNEL_REQUEST]  # type: ignore[attr-defined]


def capture_exit_signal(transport: Any) -> None:
    """Make `transport`'s channels record the "exit-signal" request (`_handle_request`).

    paramiko dispatches channel messages through the transport's
    ``_channel_handler_table`` (a class attribute): this gives the one transport its own
    copy with our handler; other transports and paramiko itself are untouched.
    """
    table = getattr(transport, "_channel_handler_table", None)
    if isinstance(table, dict) and table.get(MSG_CHANNEL_REQUEST) is not _handle_request:
        transport._channel_handler_table = {**table, MSG_CHANNEL_REQUEST: _handle_request}


def start_command(transport: Any, invocation: Invocation, timeout: float) -> Any:
    """A new session channel with `invocation` started on it, within `timeout`.

    Raises `paramiko.ChannelException` or `SessionRefused` when the server refuses
    the session or the exec request (the command did not start), `StartTimeout`.
    """
    channel = None
    capture_exit_signal(transport)
    try:
        channel = transport.open_session(timeout=timeout)
        channel.set_combine_stderr(False)
        bounded_request(channel, lambda: channel.exec_command(remote_line(invocation)), timeout)
    except (StartTimeout, paramiko.ChannelException):
        raise
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if channel is not None:
            channel.close()
        # With several refusals at once paramiko reports all but one as a bare
        # "Unable to open channel." (it keeps one saved exception per transport).
        if transport.is_active():
            raise SessionRefused(str(exc) or type(exc).__name__) from None
        raise
    return channel


class _Sink(Protocol):
    def feed(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: int | None
    timed_out: bool
    kill_confirmed: bool | None = None
    kill_note: str = ""
    exit_signal: str | None = None  # "KILL": the command was ended by that signal


def run_channel(
    transport: Any,
    channel: Any,
    invocation: Invocation,
    stdout: CappedBuffer,
    stderr: CappedBuffer,
    timeout: float,
    stdin_data: bytes | None = None,
    *,
    open_channel: ChannelOpener | None = None,
) -> Outcome:
    """Follow `invocation` on `channel` (started by `start_command`) until it ends or
    `timeout` (seconds) passes; then kill it remotely.

    `open_channel(timeout)` opens the channel for a kill after a timeout (default: a
    session on `transport`).
    """
    deadline = time.monotonic() + timeout
    marked = _MarkedStdout(stdout)
    try:
        if stdin_data:
            channel.sendall(stdin_data)
        channel.shutdown_write()  # the command sees EOF on stdin at once
        timed_out = _drain(channel, marked, stderr, deadline)
    finally:
        marked.flush()
    if not timed_out:
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        channel.close()
        signal = getattr(channel, "fleet_exit_signal", None)
        return Outcome(
            exit_code=None if status < 0 else status,
            timed_out=False,
            exit_signal=signal if status < 0 and isinstance(signal, str) else None,
        )
    channel.close()
    confirmed, note = kill_remote(transport, marked.pid, invocation.become, open_channel)
    return Outcome(exit_code=None, timed_out=True, kill_confirmed=confirmed, kill_note=note)


def _drain(channel: Any, stdout: _Sink, stderr: _Sink, deadline: float) -> bool:
    """Read both streams together until EOF and exit status. True if the deadline passed."""
    exit_seen_at: float | None = None
    waiter = _poller(_fileno(channel))
    while True:
        while channel.recv_ready():
            stdout.feed(channel.recv(_CHUNK))
        while channel.recv_stderr_ready():
            stderr.feed(channel.recv_stderr(_CHUNK))
        now = time.monotonic()
        if channel.exit_status_ready():
            ended = channel.eof_received or channel.closed
            if ended and not channel.recv_ready() and not channel.recv_stderr_ready():
                return False
            if exit_seen_at is None:
                exit_seen_at = now
            elif now - exit_seen_at > _EOF_GRACE:
                return False
        elif channel.closed and not channel.recv_ready() and not channel.recv_stderr_ready():
            return False  # ended without an exit status (a signal): nothing more will come
        remaining = deadline - now
        if remaining <= 0:
            return True
        wait = min(remaining, 0.1)
        status_event = getattr(channel, "status_event", None)
        if channel.eof_received and status_event is not None:
            # Both streams ended but the command runs on (`exec >&-`): paramiko keeps
            # the channel's fd readable after EOF, so select would spin. Only the exit
            # status can come now.
            status_event.wait(remaining)
        elif waiter is None:
            time.sleep(min(wait, 0.01))
        else:
            waiter.poll(wait * 1000)


def _poller(fd: int | None) -> select.poll | None:
    """poll(), not select(): a worker holding ~1,000 pooled connections has descriptors
    above FD_SETSIZE (1024), which select() refuses ("filedescriptor out of range")."""
    if fd is None or not hasattr(select, "poll"):
        return None
    waiter = select.poll()
    waiter.register(fd, select.POLLIN)
    return waiter


def _fileno(channel: Any) -> int | None:
    try:
        fd = channel.fileno()
    except (AttributeError, OSError, NotImplementedError):
        return None
    return fd if isinstance(fd, int) else None


def kill_remote(
    transport: Any, pid: int | None, become: bool, open_channel: ChannelOpener | None = None
) -> tuple[bool, str]:
    """End the timed-out command's process group; report whether that is confirmed."""
    if pid is None or pid <= 1:
        return False, "could not confirm the remote process ended (no usable PID was reported)"
    group = f"-{pid}"
    kill = "sudo -n kill" if become else "kill"
    # Orphaned children end as zombies until init reaps them (in containers maybe
    # never), and `kill -0` counts zombies: ask ps for live members of the session
    # (sshd made the command a session leader), falling back to kill -0.
    # A ps without -s (busybox) must not read as "nothing left": probe it first.
    script = (
        "if ps -o stat= -s $$ >/dev/null 2>&1; then "
        f"alive() {{ ps -o stat= -s {pid} 2>/dev/null | grep -q '^[^Z]'; }}; "
        f"else alive() {{ {kill} -0 {group} 2>/dev/null; }}; fi; "
        f"{kill} -TERM {group} 2>/dev/null; i=0; "
        "while alive && [ $i -lt 10 ]; do sleep 0.1; i=$((i+1)); done; "
        f"if alive; then {kill} -KILL {group} 2>/dev/null; sleep 0.1; fi; "
        "if alive; then echo alive; else echo gone; fi"
    )
    deadline = time.monotonic() + _KILL_TIMEOUT
    try:
        if open_channel is None:
            channel = transport.open_session(timeout=_KILL_TIMEOUT)
        else:
            channel = open_channel(_KILL_TIMEOUT)
        line = f"/bin/sh -c {shlex.quote(script)}"
        bounded_request(
            channel, lambda: channel.exec_command(line), max(deadline - time.monotonic(), 0.1)
        )
        channel.shutdown_write()
        out = CappedBuffer(4096)
        err = CappedBuffer(4096)
        _drain(channel, out, err, deadline)
        channel.close()
    except Exception as exc:  # the host may be gone: then we cannot know
        return False, f"could not confirm the remote process ended ({type(exc).__name__})"
    if out.text().strip().endswith("gone"):
        return True, f"remote process group {pid} killed"
    return False, f"could not confirm that remote process group {pid} ended"
