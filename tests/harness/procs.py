"""Child processes of the harness, recorded by PID and always stopped by PID.

Every server the harness starts goes through `spawn`, which registers the `Popen`;
an atexit hook stops whatever is still registered, so a crashed or interrupted test
session leaves no sshd, redis-server or worker behind. Each child gets its own
session (process group), so stopping it also ends the children it forked (sshd's
per-connection processes, a Celery worker's pool).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_lock = threading.Lock()
_live: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    with _lock:
        _live[proc.pid] = proc
    return proc


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # The child leads its own session, so its PID is its process group id; the group
    # also holds what it forked (which may outlive the leader, so signal it regardless).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _descendants(pid: int) -> list[int]:
    # sshd's per-connection processes start sessions of their own, so the process group
    # misses them; the /proc tree does not.
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            pending.extend(children)
    return found


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process and its group at once (no grace period); SIGKILL also
    ends every descendant, as a machine dying would."""
    descendants = _descendants(proc.pid) if sig == signal.SIGKILL else []
    _signal_group(proc, sig)
    _kill_pids(descendants)
    if sig == signal.SIGKILL:
        _reap(proc, 5.0)


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process group, wait up to `timeout`, then SIGKILL it and anything it
    left behind (its descendants, also in other sessions); forget the PID."""
    descendants = _descendants(proc.pid)
    _signal_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    _signal_group(proc, signal.SIGKILL)
    _kill_pids(descendants)
    _reap(proc, timeout)


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return
    with _lock:
        _live.pop(proc.pid, None)


def stop_all() -> None:
    """Stop every process still registered (the atexit guard; also safe to call early)."""
    with _lock:
        procs = list(_live.values())
    for proc in procs:
        stop(proc, timeout=3.0)


atexit.register(stop_all)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to on `address` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(address: str, port: int, reuse: bool = False) -> bool:
    """True if `port` can be bound on `address` (`reuse`: ignore TIME_WAIT leftovers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `predicate()` until it is true; raise `TimeoutError` naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
