"""SSH execution: the only package that imports paramiko.

Public surface: `run_command`, `put_file`, `get_file` (each takes a `Host` and
`ExecOptions` and returns a `HostResult`, never raising for the host's trouble),
`ConnectionPool`, `Connector` (injectable socket and transport factories),
`default_pool()` and `close_default_pool()`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from fleet.errors import ConfigError
from fleet.execute import CappedBuffer, Clock, ExecOptions, build_invocation
from fleet.hosts import Host
from fleet.results import HostResult, Status
from fleet.ssh import sftp
from fleet.ssh.command import run_channel
from fleet.ssh.connect import Connector
from fleet.ssh.errors import ConnectFailure
from fleet.ssh.pool import ConnectionPool, Lease
from fleet.ssh.sshconfig import Target, resolve_target

__all__ = [
    "ConnectionPool",
    "Connector",
    "close_default_pool",
    "default_pool",
    "get_file",
    "put_file",
    "run_command",
]

T = TypeVar("T")

_default: ConnectionPool | None = None
_default_pid = 0
_default_lock = threading.Lock()


def default_pool() -> ConnectionPool:
    """This process's pool, created on first use and re-created after a fork.

    A transport inherited across a fork shares its socket and thread state with
    the parent, so the child never touches it and starts afresh.
    """
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default_pid != os.getpid():
            _default = ConnectionPool()
            _default_pid = os.getpid()
        return _default


def close_default_pool() -> None:
    global _default
    with _default_lock:
        pool, _default = _default, None
    if pool is not None and _default_pid == os.getpid():
        pool.close()


def _prepare(host: Host, options: ExecOptions) -> Target:
    try:
        return resolve_target(host, options.ssh_config_path)
    except ValueError as exc:
        raise ConnectFailure(Status.ERROR, f"bad jump host for {host.name}: {exc}") from None


def _open(
    pool: ConnectionPool, target: Target, options: ExecOptions, opener: Callable[[Any], T]
) -> tuple[Lease, T]:
    """A lease and a fresh channel on it. A pooled transport found dead is replaced
    once: nothing has run on the host yet, so a reconnect is safe."""
    for attempt in range(2):
        lease = pool.acquire(target, options)
        try:
            return lease, opener(lease.transport)
        except paramiko.ChannelException as exc:
            pool.release(lease)
            raise ConnectFailure(
                Status.ERROR, f"the host refused a new session channel: {exc.text}"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            pool.release(lease)
            pool.discard(lease)
            if lease.reused and attempt == 0:
                continue
            raise ConnectFailure(
                Status.UNREACHABLE, f"connection lost before the command started: {_words(exc)}"
            ) from None
    raise AssertionError("unreachable")


def _words(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def run_command(
    host: Host, command: str, options: ExecOptions, pool: ConnectionPool | None = None
) -> HostResult:
    """Run `command` on `host` over SSH. Never raises for the host's own trouble."""
    clock = Clock()
    pool = pool if pool is not None else default_pool()
    try:
        invocation = build_invocation(host, command, options)
    except ConfigError as exc:
        return clock.result(host, Status.ERROR, error=str(exc))
    stdin_data: bytes | None = None
    if invocation.sudo_password_env:
        password = os.environ.get(invocation.sudo_password_env)
        if password is None:
            return clock.result(
                host,
                Status.ERROR,
                error=f"become_password_env names {invocation.sudo_password_env!r}, "
                "which is not set on the worker",
            )
        stdin_data = password.encode() + b"\n"
    stdout = CappedBuffer(options.output_cap)
    stderr = CappedBuffer(options.output_cap)
    try:
        target = _prepare(host, options)
        lease, channel = _open(
            pool, target, options, lambda t: t.open_session(timeout=options.connect_timeout)
        )
    except ConnectFailure as failure:
        return clock.result(host, failure.status, error=failure.message)
    except Exception as exc:  # a bug or an unforeseen library error: still a result
        return clock.result(host, Status.ERROR, error=f"{type(exc).__name__}: {_words(exc)}")
    try:
        outcome = run_channel(
            lease.transport,
            channel,
            invocation,
            stdout,
            stderr,
            options.command_timeout,
            stdin_data,
        )
    except Exception as exc:
        channel.close()
        if not lease.transport.is_active():
            pool.discard(lease)
        return clock.result(
            host,
            Status.ERROR,
            stdout=stdout.text(),
            stderr=stderr.text(),
            stdout_bytes=stdout.total,
            stderr_bytes=stderr.total,
            connection_reused=lease.reused,
            error=f"connection lost while the command ran (it may have run): {_words(exc)}",
        )
    finally:
        pool.release(lease)
    return clock.finished(
        host,
        exit_code=outcome.exit_code,
        stdout=stdout,
        stderr=stderr,
        timed_out=outcome.timed_out,
        timeout=options.command_timeout,
        kill_confirmed=outcome.kill_confirmed,
        kill_note=outcome.kill_note,
        connection_reused=lease.reused,
    )


def _transfer(
    host: Host,
    options: ExecOptions,
    pool: ConnectionPool | None,
    action: Callable[[paramiko.SFTPClient], int],
    describe: Callable[[int], str],
) -> HostResult:
    clock = Clock()
    pool = pool if pool is not None else default_pool()
    try:
        target = _prepare(host, options)
        lease, client = _open(
            pool, target, options, lambda t: sftp.open_sftp(t, options.connect_timeout)
        )
    except ConnectFailure as failure:
        return clock.result(host, failure.status, error=failure.message)
    except Exception as exc:
        return clock.result(host, Status.ERROR, error=f"{type(exc).__name__}: {_words(exc)}")
    try:
        size = action(client)
    except sftp.TransferTimeout:
        return clock.result(
            host,
            Status.TIMEOUT,
            connection_reused=lease.reused,
            error=f"transfer timed out after {options.command_timeout:g} s",
        )
    except OSError as exc:
        detail = exc.strerror or str(exc) or type(exc).__name__
        return clock.result(
            host, Status.ERROR, connection_reused=lease.reused, error=f"SFTP: {detail}"
        )
    except Exception as exc:
        if not lease.transport.is_active():
            pool.discard(lease)
        return clock.result(
            host,
            Status.ERROR,
            connection_reused=lease.reused,
            error=f"SFTP failed: {type(exc).__name__}: {_words(exc)}",
        )
    finally:
        client.close()
        pool.release(lease)
    return clock.result(host, Status.OK, connection_reused=lease.reused, stdout=describe(size))


def put_file(
    host: Host,
    data: bytes | Path,
    remote_path: str,
    mode: int,
    options: ExecOptions,
    pool: ConnectionPool | None = None,
) -> HostResult:
    """Upload bytes or a local file to `remote_path` with `mode`, atomically (SFTP)."""
    return _transfer(
        host,
        options,
        pool,
        lambda t: sftp.put(t, data, remote_path, mode, options.command_timeout),
        lambda size: f"wrote {size} bytes to {remote_path}",
    )


def get_file(
    host: Host,
    remote_path: str,
    local_path: Path,
    options: ExecOptions,
    pool: ConnectionPool | None = None,
) -> HostResult:
    """Download `remote_path` into `local_path` (SFTP)."""
    return _transfer(
        host,
        options,
        pool,
        lambda t: sftp.get(t, remote_path, local_path, options.command_timeout),
        lambda size: f"read {size} bytes from {remote_path}",
    )
