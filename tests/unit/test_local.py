"""connection: local — quick checks of the subprocess runner and local file copies."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from fleet.command import ExecOptions
from fleet.inventory.hosts import Host
from fleet.local import get_local, put_local, run_local
from fleet.results import HostResult, Status

LOCAL = Host(name="localhost", address="localhost", connection="local")


def test_ok_and_failed() -> None:
    ok = run_local(LOCAL, "echo out; echo err >&2", ExecOptions())
    assert (ok.status, ok.exit_code, ok.stdout, ok.stderr) == (Status.OK, 0, "out\n", "err\n")
    assert ok.started_at and ok.duration_s is not None
    bad = run_local(LOCAL, "exit 3", ExecOptions())
    assert bad.status is Status.FAILED and bad.exit_code == 3


def test_env_and_bad_env() -> None:
    host = Host(name="l", address="l", connection="local", env={"A": "1 2"})
    r = run_local(host, 'echo "$A-$B"', ExecOptions(env={"B": "b"}))
    assert r.stdout == "1 2-b\n"
    bad = Host(name="l", address="l", connection="local", env={"A=B": "x"})
    assert run_local(bad, "true", ExecOptions()).status is Status.ERROR


def test_missing_sudo_password_env_is_error() -> None:
    host = Host(
        name="l", address="l", connection="local", become=True, become_password_env="NOPE_PW"
    )
    r = run_local(host, "true", ExecOptions())
    assert r.status is Status.ERROR and "NOPE_PW" in (r.error or "")


def test_put_and_get(tmp_path: Path) -> None:
    target = tmp_path / "a.conf"
    r = put_local(LOCAL, b"x=1\n", str(target), 0o600, ExecOptions())
    assert r.ok and target.read_bytes() == b"x=1\n" and target.stat().st_mode & 0o777 == 0o600
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    assert put_local(LOCAL, src, str(target), 0o644, ExecOptions()).ok
    assert target.read_bytes() == b"abc"
    fetched = tmp_path / "out" / "localhost" / "a.conf"
    assert get_local(LOCAL, str(target), fetched, ExecOptions()).ok
    assert fetched.read_bytes() == b"abc"
    missing = get_local(LOCAL, str(tmp_path / "nope"), fetched, ExecOptions())
    assert missing.status is Status.ERROR
    denied = put_local(LOCAL, b"x", str(tmp_path / "no" / "dir" / "f"), 0o600, ExecOptions())
    assert denied.status is Status.ERROR and not os.path.exists(tmp_path / "no")


def test_worker_secrets_not_in_the_command_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASSWORD", "hunter2-worker-secret")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TERM", "xterm")
    host = Host(name="l", address="l", connection="local", env={"A": "1"})
    r = run_local(host, "env", ExecOptions(env={"FLEET_RUN_ID": "r1", "FLEET_HOST": "l"}))
    seen = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert "hunter2" not in r.stdout and "DB_PASSWORD" not in seen
    assert "TERM" not in seen
    assert seen["FLEET_RUN_ID"] == "r1" and seen["FLEET_HOST"] == "l" and seen["A"] == "1"
    assert seen["PATH"] == os.environ["PATH"] and seen["LC_TIME"] == "C"


def test_put_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "a.conf"
    # The temporary name the old code used: predictable from the worker's PID.
    (tmp_path / f".a.conf.fleet-{os.getpid()}").symlink_to(victim)
    assert put_local(LOCAL, b"new", str(target), 0o644, ExecOptions()).ok
    assert victim.read_bytes() == b"precious" and target.read_bytes() == b"new"
    assert not target.is_symlink()


def _fifo_writer(fifo: Path, reader: threading.Thread) -> BinaryIO:
    """The FIFO's write end once the upload has opened it (fails if it never does)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if not reader.is_alive() or time.monotonic() > deadline:
                pytest.fail("the upload never opened its source")
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return os.fdopen(fd, "wb")


def test_put_temp_file_has_its_final_mode_before_data(tmp_path: Path) -> None:
    fifo = tmp_path / "source"
    os.mkfifo(fifo)
    target = tmp_path / "dest" / "secret.conf"
    target.parent.mkdir()
    results: list[HostResult] = []
    upload = threading.Thread(
        target=lambda: results.append(put_local(LOCAL, fifo, str(target), 0o600, ExecOptions()))
    )
    upload.start()
    old_umask = os.umask(0o022)
    try:
        with _fifo_writer(fifo, upload) as writer:
            writer.write(b"first half ")
            writer.flush()
            deadline = time.monotonic() + 5
            temps: list[Path] = []
            while not temps and time.monotonic() < deadline:
                temps = [p for p in target.parent.iterdir() if p.name != target.name]
                time.sleep(0.01)
            assert temps, "no temporary file seen while the upload waited"
            assert temps[0].stat().st_mode & 0o777 == 0o600
            writer.write(b"second half")
    finally:
        os.umask(old_umask)
        upload.join(5)
    assert results and results[0].ok, results
    assert target.read_bytes() == b"first half second half"
    assert target.stat().st_mode & 0o777 == 0o600
