"""SFTP put and get on a pooled transport, bounded by a wall-time deadline.

Uploads go to a temporary file beside the target and are renamed into place, so
a reader never sees half a file and a timed-out upload leaves the old one intact.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import secrets
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import paramiko

from fleet.results import Status
from fleet.ssh.command import StartTimeout, bounded_request
from fleet.ssh.errors import ConnectFailure, SessionRefused

_CHUNK = 32768


class TransferTimeout(Exception):
    """The transfer ran past its deadline (raised from paramiko's progress callback)."""


#: The host's trouble when the server refuses the "sftp" subsystem request.
SUBSYSTEM_REFUSED = (
    "SFTP subsystem refused by the server (is `Subsystem sftp` configured in sshd_config?)"
)


def open_sftp(transport: Any, timeout: float) -> paramiko.SFTPClient:
    """An SFTP client on a new session channel of `transport`, within `timeout`.

    As `start_command` for an exec request: a refused session channel raises
    `paramiko.ChannelException` or `SessionRefused`, an unanswered request
    `StartTimeout`. A server that refuses the subsystem, or whose SFTP server fails
    to start, while the transport stays up raises `ConnectFailure` (status ERROR):
    the connection is sound and shared, so it must not be taken for a dead one.
    Other errors (the transport is down) propagate.
    """
    try:
        channel = transport.open_session(timeout=timeout)
    except paramiko.ChannelException:
        raise
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if transport.is_active():
            raise SessionRefused(str(exc) or type(exc).__name__) from None
        raise
    try:
        channel.settimeout(timeout)
        try:
            bounded_request(channel, lambda: channel.invoke_subsystem("sftp"), timeout)
        except (paramiko.SSHException, EOFError, OSError):
            if transport.is_active():
                raise ConnectFailure(Status.ERROR, SUBSYSTEM_REFUSED) from None
            raise
        try:
            return paramiko.SFTPClient(channel)
        except TimeoutError:  # no version reply from the SFTP server
            raise StartTimeout from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if transport.is_active():
                raise ConnectFailure(
                    Status.ERROR,
                    "SFTP subsystem failed to start on the server "
                    f"({str(exc) or type(exc).__name__}; is its `Subsystem sftp` "
                    "server working?)",
                ) from None
            raise
    except BaseException:
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            channel.close()
        raise


def _deadline_callback(deadline: float) -> Any:
    def check(_done: int, _total: int) -> None:
        if time.monotonic() > deadline:
            raise TransferTimeout

    return check


def put(
    sftp: paramiko.SFTPClient, data: bytes | Path, remote_path: str, mode: int, timeout: float
) -> int:
    """Upload; returns the bytes written. Raises `TransferTimeout`, `OSError`, `SSHException`.

    The data goes first into a private directory (created 0700, exclusively, under an
    unpredictable name) beside the target: no other user can open the file before
    it has its final mode, and nothing planted at a guessed name is followed.
    """
    deadline = time.monotonic() + timeout
    check = _deadline_callback(deadline)
    directory, name = posixpath.split(remote_path)
    private = posixpath.join(directory or ".", f".{name}.fleet-{secrets.token_hex(8)}")
    tmp = posixpath.join(private, name)
    sftp.mkdir(private, 0o700)
    size = 0
    try:
        source: IO[bytes] = data.open("rb") if isinstance(data, Path) else io.BytesIO(data)
        with source, sftp.open(tmp, "wbx") as remote:
            remote.chmod(mode)  # before the first byte
            remote.set_pipelined(True)
            while chunk := source.read(_CHUNK):
                remote.write(chunk)
                size += len(chunk)
                check(size, 0)
        written = sftp.stat(tmp).st_size
        if written != size:
            raise OSError(f"size mismatch after upload: wrote {size}, found {written}")
        sftp.posix_rename(tmp, remote_path)
        return size
    except TimeoutError:
        raise TransferTimeout from None
    finally:
        _quiet_remove(sftp, tmp)
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            sftp.rmdir(private)


def get(sftp: paramiko.SFTPClient, remote_path: str, local_path: Path, timeout: float) -> int:
    """Download into `local_path` (written atomically); returns the bytes read."""
    deadline = time.monotonic() + timeout
    local_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{local_path.name}.fleet-", dir=local_path.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            size = sftp.getfo(remote_path, sink, callback=_deadline_callback(deadline))
        os.replace(tmp, local_path)
        return int(size)
    except TimeoutError:
        raise TransferTimeout from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _quiet_remove(sftp: paramiko.SFTPClient, path: str) -> None:
    # Best effort: the channel may be the thing that failed (after a successful
    # rename there is nothing left to remove).
    with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
        sftp.remove(path)
