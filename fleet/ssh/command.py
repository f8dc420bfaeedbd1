"""One command on one channel: stdin closed, both streams drained, a wall-time deadline.

paramiko's `exec_command(timeout=)` is only a read timeout and `recv_exit_status()`
can deadlock on undrained output, so the drain loop here owns the deadline. The
remote command is wrapped to report its process group first (sshd makes it a
session leader), so a timeout can end it through a second channel: closing a
channel without a pty leaves the remote command running.
"""

from __future__ import annotations

import re
import select
import shlex
import time
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.execute import EOF_GRACE, CappedBuffer, Invocation

_MARKER = b"FLEET-PID "
_MARKER_LINE = re.compile(rb"FLEET-PID (\d+)\n")
_MARKER_SEARCH_LIMIT = 64 * 1024
_CHUNK = 65536
# After the exit status arrives, how long to wait for EOF: a daemonised child may
# hold the streams open forever (ssh itself would hang there).
_EOF_GRACE = EOF_GRACE
_KILL_TIMEOUT = 5.0


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


class _Sink(Protocol):
    def feed(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: int | None
    timed_out: bool
    kill_confirmed: bool | None = None
    kill_note: str = ""


def run_channel(
    transport: Any,
    channel: Any,
    invocation: Invocation,
    stdout: CappedBuffer,
    stderr: CappedBuffer,
    timeout: float,
    stdin_data: bytes | None = None,
) -> Outcome:
    """Run `invocation` on `channel` (already open) until it ends or `timeout` passes."""
    deadline = time.monotonic() + timeout
    marked = _MarkedStdout(stdout)
    try:
        channel.set_combine_stderr(False)
        channel.exec_command(remote_line(invocation))
        if stdin_data:
            channel.sendall(stdin_data)
        channel.shutdown_write()  # the command sees EOF on stdin at once
        timed_out = _drain(channel, marked, stderr, deadline)
    finally:
        marked.flush()
    if not timed_out:
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        channel.close()
        return Outcome(exit_code=None if status < 0 else status, timed_out=False)
    channel.close()
    confirmed, note = kill_remote(transport, marked.pid, invocation.become)
    return Outcome(exit_code=None, timed_out=True, kill_confirmed=confirmed, kill_note=note)


def _drain(channel: Any, stdout: _Sink, stderr: _Sink, deadline: float) -> bool:
    """Read both streams together until EOF and exit status. True if the deadline passed."""
    exit_seen_at: float | None = None
    wait_fd = _fileno(channel)
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
        elif wait_fd is None:
            time.sleep(min(wait, 0.01))
        else:
            select.select([wait_fd], [], [], wait)


def _fileno(channel: Any) -> int | None:
    try:
        fd = channel.fileno()
    except (AttributeError, OSError, NotImplementedError):
        return None
    return fd if isinstance(fd, int) else None


def kill_remote(transport: Any, pid: int | None, become: bool) -> tuple[bool, str]:
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
        channel = transport.open_session(timeout=_KILL_TIMEOUT)
        channel.exec_command(f"/bin/sh -c {shlex.quote(script)}")
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
