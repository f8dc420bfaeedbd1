"""SFTP put and get on a pooled transport, bounded by a wall-time deadline.

Uploads go to a temporary name beside the target and are renamed into place, so
a reader never sees half a file and a timed-out upload leaves the old one intact.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import time
from pathlib import Path
from typing import IO, Any

import paramiko


class TransferTimeout(Exception):
    """The transfer ran past its deadline (raised from paramiko's progress callback)."""


def open_sftp(transport: Any, timeout: float) -> paramiko.SFTPClient:
    channel = transport.open_session(timeout=timeout)
    channel.settimeout(timeout)
    channel.invoke_subsystem("sftp")
    return paramiko.SFTPClient(channel)


def _deadline_callback(deadline: float) -> Any:
    def check(_done: int, _total: int) -> None:
        if time.monotonic() > deadline:
            raise TransferTimeout

    return check


def put(
    sftp: paramiko.SFTPClient, data: bytes | Path, remote_path: str, mode: int, timeout: float
) -> int:
    """Upload; returns the bytes written. Raises `TransferTimeout`, `OSError`, `SSHException`."""
    deadline = time.monotonic() + timeout
    directory, name = posixpath.split(remote_path)
    tmp = posixpath.join(directory, f".{name}.fleet-{os.getpid()}-{time.monotonic_ns()}")
    try:
        source: IO[bytes] = data.open("rb") if isinstance(data, Path) else io.BytesIO(data)
        with source:
            attrs = sftp.putfo(source, tmp, callback=_deadline_callback(deadline), confirm=True)
        try:
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, remote_path)
        except BaseException:
            sftp.remove(tmp)
            raise
        return int(attrs.st_size or 0)
    except (TransferTimeout, TimeoutError):
        _quiet_remove(sftp, tmp)
        raise TransferTimeout from None


def get(sftp: paramiko.SFTPClient, remote_path: str, local_path: Path, timeout: float) -> int:
    """Download into `local_path` (written atomically); returns the bytes read."""
    deadline = time.monotonic() + timeout
    local_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = local_path.with_name(f".{local_path.name}.fleet-{os.getpid()}")
    try:
        with tmp.open("wb") as sink:
            size = sftp.getfo(remote_path, sink, callback=_deadline_callback(deadline))
        os.replace(tmp, local_path)
        return int(size)
    except TimeoutError:
        raise TransferTimeout from None
    finally:
        tmp.unlink(missing_ok=True)


def _quiet_remove(sftp: paramiko.SFTPClient, path: str) -> None:
    # Best effort: the channel may be the thing that failed.
    with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
        sftp.remove(path)
