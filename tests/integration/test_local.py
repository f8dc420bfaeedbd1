"""connection: local on the worker: bounds and process-group killing, for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fleet.command import ExecOptions
from fleet.execute import execute
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status

LOCAL = Host(name="localhost", address="localhost", connection="local")


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    cmd = f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; echo started; sleep 60"
    t0 = time.monotonic()
    r = execute(LOCAL, cmd, ExecOptions(command_timeout=1.0))
    assert time.monotonic() - t0 < 3
    assert r.status is Status.TIMEOUT and r.stdout == "started\n"
    assert r.remote_kill_confirmed is True and r.exit_code is None
    for pid in map(int, pids.read_text().split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_stdin_closed_and_large_output() -> None:
    t0 = time.monotonic()
    assert execute(LOCAL, "cat", ExecOptions(command_timeout=10)).ok
    assert time.monotonic() - t0 < 5  # EOF at once, not the 10 s timeout
    cmd = (
        "head -c 5000000 /dev/zero | tr '\\0' a & head -c 5000000 /dev/zero | tr '\\0' b >&2; wait"
    )
    r = execute(LOCAL, cmd, ExecOptions(command_timeout=20))
    assert r.ok and r.stdout_bytes == r.stderr_bytes == 5_000_000
    assert r.stdout_truncated and len(r.stdout) == 1 << 20


def test_non_utf8_is_json_safe() -> None:
    r = execute(LOCAL, r"printf '\377\376'", ExecOptions())
    assert HostResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def _sudo_usable() -> bool:
    return shutil.which("sudo") is not None and (
        subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not _sudo_usable(), reason="`sudo -n true` fails for the test user")
def test_sudo_password_not_readable_by_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_TEST_SUDO_PW", "hunter2-sudo-secret")
    host = Host(
        name="localhost",
        address="localhost",
        connection="local",
        become=True,
        become_password_env="FLEET_TEST_SUDO_PW",
    )
    r = execute(host, "cat; echo done", ExecOptions(command_timeout=5))
    assert r.status is Status.OK, (r.error, r.stderr)
    assert r.stdout == "done\n"
    assert "hunter2" not in json.dumps(r.to_dict())


def test_background_child_does_not_hold_the_result() -> None:
    # As over SSH: the command's own exit decides; a child keeping stdout open is
    # waited for a short grace only, not until the timeout.
    t0 = time.monotonic()
    r = execute(LOCAL, "sleep 6 & echo started", ExecOptions(command_timeout=4))
    assert r.status is Status.OK and r.exit_code == 0, r.error
    assert r.stdout == "started\n"
    assert time.monotonic() - t0 < 3.5
