"""The dispatcher: one command (or file transfer) on one host, over SSH or locally.

`fleet.ssh` is imported only when a host actually needs SSH, so the CLI, the inventory
and `connection: local` stay light (no paramiko).
"""

from __future__ import annotations

from pathlib import Path

from fleet.command import ExecOptions
from fleet.inventory.hosts import Host
from fleet.results import HostResult


def execute(host: Host, command: str, options: ExecOptions) -> HostResult:
    """Run `command` on `host`. Never raises for the host's own trouble: it is a status."""
    if host.is_local:
        from fleet.local import run_local

        return run_local(host, command, options)
    from fleet.ssh import run_command

    return run_command(host, command, options)


def put_file(
    host: Host, data: bytes | Path, remote_path: str, mode: int, options: ExecOptions
) -> HostResult:
    """Upload bytes or a local file to `remote_path` with `mode` (SFTP, or a copy when local)."""
    if host.is_local:
        from fleet.local import put_local

        return put_local(host, data, remote_path, mode, options)
    from fleet.ssh import put_file as ssh_put

    return ssh_put(host, data, remote_path, mode, options)


def get_file(host: Host, remote_path: str, local_path: Path, options: ExecOptions) -> HostResult:
    """Download `remote_path` from `host` into `local_path` (a per-host path the caller picks)."""
    if host.is_local:
        from fleet.local import get_local

        return get_local(host, remote_path, local_path, options)
    from fleet.ssh import get_file as ssh_get

    return ssh_get(host, remote_path, local_path, options)
