"""A ``ProxyCommand`` as the socket paramiko talks through.

As ssh(1) runs it: ``$SHELL -c "exec COMMAND"`` (ssh_config(5) ProxyCommand: "The command
string extends to the end of the line, and is executed using the user's shell 'exec'
directive"), the SSH stream on its stdin and stdout, its stderr kept (the last
`STDERR_KEPT` bytes) to explain a failure. `paramiko.ProxyCommand` is not used: it splits
the command without a shell, spins when the command exits (its ``recv`` never returns
EOF), and leaves the process to the garbage collector.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import tempfile
import time
from typing import IO

from fleet.results import Status
from fleet.ssh.errors import ConnectFailure
from fleet.textsafe import make_visible_line

STDERR_KEPT = 400


class ProxySocket:
    """The socket-like object (`recv`, `send`, `settimeout`, `close`) paramiko needs."""

    def __init__(self, command: str, shell: str | None = None) -> None:
        self.command = command
        self._timeout: float | None = None
        self._last_words: str | None = None  # the stderr tail, kept when closed
        self._ended = False
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close)
        argv = [shell or os.environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"]
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                bufsize=0,
                start_new_session=True,  # a Ctrl-C for fleet is not one for the proxy
            )
        except OSError:
            self._stderr.close()
            raise
        # poll(), not select(): a worker holding many pooled connections has descriptors
        # above FD_SETSIZE (1024), which select() refuses. Registered once, used per recv.
        self._readable = select.poll()
        assert self.process.stdout is not None  # stdout=PIPE
        self._readable.register(self.process.stdout, select.POLLIN)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" once the command closed its output (EOF, as a
        socket); `socket.timeout` when nothing came within the timeout."""
        stdout = self.process.stdout
        assert stdout is not None
        if not self._readable.poll(None if self._timeout is None else self._timeout * 1000):
            raise TimeoutError()
        return os.read(stdout.fileno(), size)

    def send(self, data: bytes | memoryview) -> int:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            return stdin.write(data) or 0
        except (BrokenPipeError, ValueError):
            raise OSError(f"ProxyCommand ended: {self.stderr_tail() or 'no message'}") from None

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view) :]

    @property
    def closed(self) -> bool:
        return self._ended or self.process.returncode is not None

    @property
    def _closed(self) -> bool:  # what paramiko's Transport.stop_thread asks a socket
        return self.closed

    def stderr_tail(self) -> str:
        """The end of what the command wrote on stderr, made visible (one line)."""
        if self._last_words is not None:
            return self._last_words
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - STDERR_KEPT))
            text = self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return make_visible_line(" ".join(text.split()))

    def close(self) -> None:
        """End the command (SIGTERM, then SIGKILL after a second) and reap it."""
        self._ended = True
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + 1.0
            while self.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.process.poll() is None:
                self._signal(signal.SIGKILL)
                self.process.wait()
        if self._last_words is None:
            self._last_words = self.stderr_tail()
        self._stderr.close()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def explain(self, failure: ConnectFailure) -> ConnectFailure:
        """`failure` with the command and its last words added."""
        tail = self.stderr_tail()
        said = f": {tail[-200:]}" if tail else ""
        return ConnectFailure(
            failure.status,
            f"{failure.message} (through ProxyCommand {self.command!r}{said})",
        )


def open_proxy(command: str) -> ProxySocket:
    """Start `command`; raises `ConnectFailure` when it cannot start."""
    try:
        return ProxySocket(command)
    except OSError as exc:
        raise ConnectFailure(
            Status.UNREACHABLE,
            f"ProxyCommand {command!r} could not start: {exc.strerror or exc}",
        ) from None
