"""A private `redis-server` on a free loopback port: no persistence, its own directory."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import procs


class RedisStartError(RuntimeError):
    """redis-server did not come up; the message carries its log tail."""


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`redis-server --port P --bind 127.0.0.1 --save '' --appendonly no --dir TMP`.

    `restart()` keeps the port (for "Redis restarted mid-run"); its data is lost, as
    with a real restart of a server without persistence, unless `persistent` (AOF,
    fsync on every write, as a production broker would run).
    """

    def __init__(
        self, directory: Path | None = None, port: int | None = None, *, persistent: bool = False
    ) -> None:
        self.persistent = persistent
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisStartError("redis-server not found on PATH")
        self._binary = binary
        self.dir = Path(directory or tempfile.mkdtemp(prefix="fleet-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "redis.log"
        self.port = port or procs.free_port("127.0.0.1")
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("redis-server is not running")
        return self._proc.pid

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start (again) on `self.port`; raise `RedisStartError` with the log tail on failure."""
        if self.is_running:
            return
        argv = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            *(["--appendfsync", "always"] if self.persistent else []),
            "--dir", str(self.dir),
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = procs.spawn(argv, self.log_path)
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                procs.stop(self._proc)
                self._proc = None
                raise RedisStartError(
                    f"redis-server on port {self.port} did not answer PING:\n"
                    + procs.log_tail(self.log_path)
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it lingers."""
        if self._proc is not None:
            procs.stop(self._proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL at once: a crash, not a shutdown."""
        if self._proc is not None:
            procs.kill(self._proc, signal.SIGKILL)
            self._proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, optionally stay down `down_for` seconds, start again on the same port."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        return f"RedisServer({self.url}, running={self.is_running})"
