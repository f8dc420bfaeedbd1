"""`connection: local`: run on the worker itself, through a subprocess.

Same bounds and the same result shape as SSH: stdin closed, both streams drained
together and capped, a wall-time deadline. The command runs in its own process
group so a timeout can end it and everything it started.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from fleet.command import (
    EOF_GRACE,
    CappedBuffer,
    Clock,
    ExecOptions,
    build_invocation,
    signal_label,
)
from fleet.errors import ConfigError
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status
from fleet.stdin_env import stdin_bytes

_KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL
# What a command inherits from the worker's environment (as sshd gives a session).
_PASSED_ENV = frozenset({"PATH", "HOME", "LANG", "USER", "LOGNAME", "SHELL", "TZ", "TMPDIR"})


def run_local(host: Host, command: str, options: ExecOptions) -> HostResult:
    """Run `command` in a subprocess on this machine. Never raises for the command's trouble."""
    clock = Clock()
    try:
        invocation = build_invocation(host, command, options)
    except ConfigError as exc:
        return clock.result(host, Status.ERROR, error=str(exc))
    password = _sudo_password(invocation.sudo_password_env)
    if isinstance(password, str):
        return clock.result(host, Status.ERROR, error=password)
    # The sudo password line, then the environment values: never in the command line.
    stdin_data = stdin_bytes(invocation.env_payload, password)
    env = command_environment(os.environ, host, options)
    try:
        proc = subprocess.Popen(
            list(invocation.argv),
            stdin=subprocess.PIPE if stdin_data else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return clock.result(host, Status.ERROR, error=f"cannot start the command: {exc}")
    if stdin_data and proc.stdin is not None:
        # Never blocks: at most the password and MAX_ENV_BYTES, below a pipe's buffer.
        # OSError: the command ended or closed stdin; it never wanted the password.
        with contextlib.suppress(OSError):
            proc.stdin.write(stdin_data)
        proc.stdin.close()
    stdout = CappedBuffer(options.output_cap)
    stderr = CappedBuffer(options.output_cap)
    timed_out = _drain(proc, stdout, stderr, time.monotonic() + options.command_timeout)
    kill_confirmed: bool | None = None
    note = ""
    if timed_out:
        kill_confirmed = _kill_group(proc)
        note = (
            f"process group {proc.pid} killed"
            if kill_confirmed
            else f"could not confirm that process group {proc.pid} ended"
        )
    exit_code = None if timed_out else proc.wait()
    exit_signal = None
    if exit_code is not None and exit_code < 0:
        # Ended by a signal: no exit code, the signal's name, as over SSH (exit-signal)
        exit_signal = _signal_name(-exit_code)
        exit_code = None
    return clock.finished(
        host,
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        timeout=options.command_timeout,
        kill_confirmed=kill_confirmed,
        kill_note=note,
        exit_signal=exit_signal,
    )


def _signal_name(number: int) -> str:
    """``KILL`` for 9: the name RFC 4254 uses (sshd's exit-signal), the number if unnamed."""
    try:
        return signal_label(signal.Signals(number).name)
    except ValueError:
        return str(number)


def command_environment(
    worker_env: Mapping[str, str], host: Host, options: ExecOptions
) -> dict[str, str]:
    """What a local command starts with: a login-like minimum of the worker's
    environment. The worker's environment holds the secrets behind `password_env` and
    `become_password_env`, and broker URLs. The host's and the run's variables are set
    by the wrapping shell (`fleet.command.build_invocation`), as over SSH."""
    base = {
        name: value
        for name, value in worker_env.items()
        if name in _PASSED_ENV or name.startswith("LC_")
    }
    base.setdefault("PATH", os.defpath)
    return base


def _sudo_password(env_name: str | None) -> bytes | str | None:
    """The sudo password as bytes (no newline), or an error message; never the value in it."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if value is None:
        return f"become_password_env names {env_name!r}, which is not set on the worker"
    return value.encode()


def _drain(
    proc: subprocess.Popen[bytes], stdout: CappedBuffer, stderr: CappedBuffer, deadline: float
) -> bool:
    """Read both pipes until they close, or until the command has exited and
    `EOF_GRACE` has passed (a background child may hold them open forever), or the
    deadline passes. True if the deadline passed."""
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    selector.register(proc.stdout, selectors.EVENT_READ, stdout)
    selector.register(proc.stderr, selectors.EVENT_READ, stderr)
    exit_fd = _exit_fd(proc.pid)
    if exit_fd is not None:
        selector.register(exit_fd, selectors.EVENT_READ, None)
    exited_at: float | None = None
    open_pipes = 2
    try:
        while open_pipes:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at >= EOF_GRACE:
                return False
            remaining = deadline - now
            if remaining <= 0:
                return True
            wait = remaining
            if exited_at is not None:
                wait = min(wait, exited_at + EOF_GRACE - now)
            elif exit_fd is None:
                wait = min(wait, 0.05)  # no pidfd: notice the exit by polling
            for key, _ in selector.select(timeout=wait):
                if key.data is None:
                    selector.unregister(key.fileobj)  # exited: poll() above sees it
                    continue
                data = os.read(key.fd, 65536)
                if data:
                    key.data.feed(data)
                else:
                    selector.unregister(key.fileobj)
                    open_pipes -= 1
        # Both pipes closed; the process may still be exiting (or a child holds no pipe).
        remaining = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            return True
        return False
    finally:
        selector.close()
        if exit_fd is not None:
            os.close(exit_fd)
        proc.stdout.close()
        proc.stderr.close()


def _exit_fd(pid: int) -> int | None:
    """A pidfd (Linux 5.3+): readable once the process exits. None elsewhere."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _kill_group(proc: subprocess.Popen[bytes]) -> bool:
    """End the command's whole process group; True once no process of it is left."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    for sig, wait in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, _KILL_GRACE)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            return False  # e.g. sudo's child runs as another user
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()
            if not _group_alive(pgid):
                break
            time.sleep(0.02)
    proc.poll()
    if proc.returncode is None:
        try:
            proc.wait(timeout=_KILL_GRACE)
        except subprocess.TimeoutExpired:
            return False
    return not _group_alive(pgid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def put_local(
    host: Host, data: bytes | Path, remote_path: str, mode: int, options: ExecOptions
) -> HostResult:
    """Copy bytes or a file to `remote_path` on this machine, atomically, with `mode`.

    The temporary file gets an unpredictable name, is created exclusively (never
    through a planted symlink) and has its final mode before the first byte."""
    clock = Clock()
    target = Path(remote_path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.fleet-", dir=target.parent)
        with os.fdopen(fd, "wb") as sink:
            os.fchmod(sink.fileno(), mode)
            if isinstance(data, Path):
                with data.open("rb") as source:
                    shutil.copyfileobj(source, sink, 1 << 20)
            else:
                sink.write(data)
            size = sink.tell()
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return clock.result(host, Status.ERROR, error=f"cannot write {remote_path}: {exc.strerror}")
    return clock.result(host, Status.OK, stdout=f"wrote {size} bytes to {remote_path}")


def get_local(host: Host, remote_path: str, local_path: Path, options: ExecOptions) -> HostResult:
    """Copy `remote_path` on this machine to `local_path`."""
    clock = Clock()
    try:
        local_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote_path, local_path)
        size = local_path.stat().st_size
    except OSError as exc:
        return clock.result(host, Status.ERROR, error=f"cannot read {remote_path}: {exc.strerror}")
    return clock.result(host, Status.OK, stdout=f"read {size} bytes from {remote_path}")
