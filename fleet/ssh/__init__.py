"""SSH execution: the only package that imports paramiko.

Public surface: `run_command`, `put_file`, `get_file` (each takes a `Host` and
`ExecOptions` and returns a `HostResult`, never raising for the host's trouble),
`ConnectionPool`, `Connector` (injectable socket and transport factories),
`default_pool()`, `configure_default_pool()`, `configure_handshake_limiter()` (the
per-sshd handshake limit, `fleet.ssh.handshakes`) and `close_default_pool()`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from fleet.command import CappedBuffer, Clock, ExecOptions, build_invocation, streams
from fleet.errors import ConfigError
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status
from fleet.settings import DEFAULTS
from fleet.ssh import sftp
from fleet.ssh.command import StartTimeout, run_channel, start_command
from fleet.ssh.connect import Connector
from fleet.ssh.errors import ConnectFailure, SessionRefused
from fleet.ssh.handshakes import HandshakeLimiter
from fleet.ssh.paramiko_log import route_paramiko_logs
from fleet.ssh.pool import ConnectionPool, Lease
from fleet.ssh.sshconfig import Target, resolve_target
from fleet.stdin_env import stdin_bytes

__all__ = [
    "ConnectionPool",
    "Connector",
    "close_default_pool",
    "configure_default_pool",
    "configure_handshake_limiter",
    "default_pool",
    "get_file",
    "put_file",
    "run_command",
]

T = TypeVar("T")

route_paramiko_logs()  # before any transport exists: no raw paramiko line ever

_default: ConnectionPool | None = None
_default_pid = 0
_default_lock = threading.Lock()
_default_config: tuple[int, float] = (DEFAULTS.pool_size, DEFAULTS.pool_idle_ttl)
_default_limiter: tuple[int, HandshakeLimiter | None] = (0, None)  # (its process, it)


def default_pool() -> ConnectionPool:
    """This process's pool, created on first use and re-created after a fork.

    A transport inherited across a fork shares its socket and thread state with
    the parent, so the child never touches it and starts afresh.
    """
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default_pid != os.getpid():
            _default = ConnectionPool(max_size=_default_config[0], idle_ttl=_default_config[1])
            # A limiter's local state does not cross a fork: a child configures its own.
            limiter_pid, limiter = _default_limiter
            _default.limiter = limiter if limiter_pid == os.getpid() else None
            _default_pid = os.getpid()
        return _default


def configure_default_pool(max_size: int, idle_ttl: float) -> None:
    """Size bound and idle TTL of this process's pool (settings `pool_size`,
    `pool_idle_ttl`); applies to the pool now and to any pool created later."""
    global _default_config
    with _default_lock:
        _default_config = (max_size, idle_ttl)
        pool = _default if _default_pid == os.getpid() else None
    if pool is not None:
        pool.max_size = max_size
        pool.idle_ttl = idle_ttl
        pool.sweep()
        pool.release_excess()


def configure_handshake_limiter(limiter: HandshakeLimiter | None) -> None:
    """The handshake limit of this process's pool (`fleet.ssh.handshakes`; None: no
    limit), now and for any pool created later. A limiter belongs to one process: a
    prefork child configures its own."""
    global _default_limiter
    with _default_lock:
        _default_limiter = (os.getpid(), limiter)
        pool = _default if _default_pid == os.getpid() else None
    if pool is not None:
        pool.limiter = limiter


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
    """A lease and a fresh channel on it; nothing has run on the host yet, so two
    retries are safe: a pooled transport found dead is replaced once, and a refused
    channel (OpenSSH `MaxSessions`) is tried once more on another transport. A
    `ConnectFailure` from `opener` (the transport is up but the server refused what
    was asked, e.g. the SFTP subsystem) is the host's answer: no retry, no discard."""
    avoid: Any = None
    replaced_dead = False
    while True:
        lease = pool.acquire(target, options, avoid=avoid)
        try:
            return lease, pool.open_channel(lease, opener)
        except ConnectFailure:
            # The opener's verdict on a live transport (e.g. no SFTP subsystem): the
            # connection is sound and may be carrying other threads' commands.
            pool.release(lease)
            raise
        except (paramiko.ChannelException, SessionRefused) as exc:
            pool.release(lease)
            if avoid is None:
                avoid = lease.transport
                continue
            detail = exc.text if isinstance(exc, paramiko.ChannelException) else str(exc)
            raise ConnectFailure(
                Status.ERROR, f"the host refused a new session channel: {detail}"
            ) from None
        except StartTimeout:
            # A transport that leaves a request unanswered serves nobody else.
            pool.retire(lease)
            pool.release(lease)
            raise ConnectFailure(
                Status.TIMEOUT,
                f"the host did not answer the request to start the session within "
                f"{_start_timeout(options):g} s (it may have started: nothing more is known)",
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            pool.release(lease)
            pool.discard(lease)
            if lease.reused and not replaced_dead:
                replaced_dead = True
                continue
            raise ConnectFailure(
                Status.UNREACHABLE, f"connection lost before the command started: {_words(exc)}"
            ) from None


def _start_timeout(options: ExecOptions) -> float:
    """How long a host may take to accept a session or exec request."""
    return min(options.connect_timeout, options.command_timeout)


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
    password: str | None = None
    if invocation.sudo_password_env:
        password = os.environ.get(invocation.sudo_password_env)
        if password is None:
            return clock.result(
                host,
                Status.ERROR,
                error=f"become_password_env names {invocation.sudo_password_env!r}, "
                "which is not set on the worker",
            )
    # The sudo password line, then the environment values: never in the command line.
    stdin_data = stdin_bytes(
        invocation.env_payload, None if password is None else password.encode()
    )
    stdout = CappedBuffer(options.output_cap)
    stderr = CappedBuffer(options.output_cap)
    try:
        target = _prepare(host, options)
        lease, channel = _open(
            pool,
            target,
            options,
            lambda t: start_command(t, invocation, _start_timeout(options)),
        )
    except ConnectFailure as failure:
        return clock.result(host, failure.status, error=failure.message)
    except Exception as exc:  # a bug or an unforeseen library error: still a result
        return clock.result(host, Status.ERROR, error=f"{type(exc).__name__}: {_words(exc)}")
    spare: list[Lease] = []

    def open_kill_channel(timeout: float) -> Any:
        def session(transport: Any) -> Any:
            return transport.open_session(timeout=timeout)

        try:
            return pool.open_channel(lease, session)
        except paramiko.SSHException:  # refused (or reported as "Unable to open channel.")
            if not lease.transport.is_active():
                raise
            # At MaxSessions (sshd keeps the timed-out command's session while it
            # runs): the kill goes through another transport to the same host.
            spare.append(pool.acquire(target, options, avoid=lease.transport))
            return pool.open_channel(spare[-1], session)

    try:
        outcome = run_channel(
            lease.transport,
            channel,
            invocation,
            stdout,
            stderr,
            options.command_timeout,
            stdin_data,
            open_channel=open_kill_channel,
        )
    except Exception as exc:
        channel.close()
        if not lease.transport.is_active():
            pool.discard(lease)
        return clock.result(
            host,
            Status.ERROR,
            **streams(stdout, stderr),
            connection_reused=lease.reused,
            error=f"connection lost while the command ran (it may have run): {_words(exc)}",
        )
    finally:
        pool.release(lease)
        for extra in spare:
            pool.release(extra)
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
        exit_signal=outcome.exit_signal,
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
