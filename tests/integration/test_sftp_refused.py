"""A server that refuses SFTP (no ``Subsystem sftp``) or whose SFTP server fails at once,
on a connection that is alive and shared: the transfer ends `error` saying so, and the
pooled connection, with another thread's command running on it, is left alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.command import ExecOptions
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status
from fleet.ssh import ConnectionPool, get_file, put_file, run_command
from tests.harness.sshd import SSHFleet


def _options(fleet: SSHFleet) -> ExecOptions:
    return ExecOptions(
        connect_timeout=5.0,
        auth_timeout=5.0,
        command_timeout=20.0,
        known_hosts=str(fleet.known_hosts),
        user_known_hosts=None,
        ssh_config=None,
    )


def _wait_for(path: Path, worker: threading.Thread) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        if not worker.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared (the command did not start)")
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("subsystem", "words"),
    [
        (None, "SFTP subsystem refused by the server (is `Subsystem sftp` configured"),
        ("/bin/false", "SFTP subsystem failed to start on the server"),
    ],
    ids=["no-subsystem", "sftp-server-fails"],
)
def test_refused_sftp_is_an_error_and_spares_the_shared_connection(
    make_ssh_fleet: Callable[..., SSHFleet], tmp_path: Path, subsystem: str | None, words: str
) -> None:
    fleet = make_ssh_fleet(1, sftp=subsystem)
    [h] = fleet.hosts
    host = Host(
        name=h.name,
        address=h.address,
        port=h.port,
        user=fleet.user,
        identity_file=str(fleet.client_key),
    )
    options = _options(fleet)
    pool = ConnectionPool()
    try:
        first = run_command(host, "echo before", options, pool)
        assert first.status is Status.OK and first.stdout == "before\n", first.error
        assert len(pool) == 1

        # Another thread's command, running on the pooled connection while the
        # transfers are refused: it waits for `go` (hosts share this filesystem).
        started, go = tmp_path / "started", tmp_path / "go"
        busy: list[HostResult] = []
        line = f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; echo finished"
        worker = threading.Thread(
            target=lambda: busy.append(run_command(host, line, options, pool))
        )
        worker.start()
        try:
            _wait_for(started, worker)
            put = put_file(host, b"data\n", str(tmp_path / "placed"), 0o600, options, pool)
            got = get_file(host, "/etc/hostname", tmp_path / "fetched", options, pool)
        finally:
            go.touch()
            worker.join(30)

        for result in (put, got):
            assert result.status is Status.ERROR, result
            assert result.error is not None and words in result.error, result.error
            assert "\n" not in result.error
        assert not (tmp_path / "placed").exists() and not (tmp_path / "fetched").exists()

        # The running command kept its connection and finished normally.
        [running] = busy
        assert running.status is Status.OK and running.stdout == "finished\n", running.error
        assert running.connection_reused
        # The connection is still pooled and serves the next command.
        assert len(pool) == 1
        after = run_command(host, "echo after", options, pool)
        assert after.status is Status.OK and after.stdout == "after\n", after.error
        assert after.connection_reused
        assert len(pool) == 1
    finally:
        pool.close()
