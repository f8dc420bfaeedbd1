"""fleet.ssh against real OpenSSH servers from the harness (tests/harness/sshd.py)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from fleet.command import ExecOptions
from fleet.inventory.hosts import Host
from fleet.results import HostResult, Status
from fleet.ssh import ConnectionPool, Connector, get_file, put_file, run_command
from fleet.ssh.command import StartTimeout, bounded_request
from tests.harness.sshd import SSHDProcess, SSHFleet, SSHHost, generate_key


def fingerprint_of(host: SSHHost) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{host.host_key_path}.pub"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]  # SHA256:...


def make_host(fleet: SSHFleet, h: SSHHost, **kw: Any) -> Host:
    values: dict[str, Any] = {
        "address": h.address,
        "port": h.port,
        "user": fleet.user,
        "identity_file": str(fleet.client_key),
    }
    values.update(kw)
    return Host(name=h.name, **values)


def make_options(known_hosts: Path | str, **kw: Any) -> ExecOptions:
    # Generous defaults: a test that expects success must not fail because a loaded
    # 2-core CI machine was slow. Tests about a timeout set theirs explicitly and
    # bound the elapsed time well under the next-longer one.
    values: dict[str, Any] = {
        "connect_timeout": 5.0,
        "auth_timeout": 5.0,
        "command_timeout": 10.0,
        "known_hosts": str(known_hosts),
        "user_known_hosts": None,
        "ssh_config": None,
    }
    values.update(kw)
    return ExecOptions(**values)


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    p = ConnectionPool()
    yield p
    p.close()


@pytest.fixture
def opts(ssh_fleet: SSHFleet) -> ExecOptions:
    return make_options(ssh_fleet.known_hosts)


def run(
    fleet: SSHFleet, cmd: str, opts: ExecOptions, pool: ConnectionPool, i: int = 0
) -> HostResult:
    return run_command(make_host(fleet, fleet.hosts[i]), cmd, opts, pool)


def test_ok_with_exit_code_and_output(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    r = run(ssh_fleet, "echo hello; echo oops >&2", opts, pool)
    assert r.status is Status.OK, r.error
    assert (r.exit_code, r.stdout, r.stderr) == (0, "hello\n", "oops\n")
    assert r.stdout_bytes == 6 and not r.stdout_truncated
    assert r.started_at and r.finished_at and r.duration_s is not None
    assert r.connection_reused is False


def test_failed_with_exit_code_3(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    r = run(ssh_fleet, "echo partial; exit 3", opts, pool)
    assert r.status is Status.FAILED and r.exit_code == 3 and r.stdout == "partial\n"


def test_refused_port_is_unreachable_fast(
    refused_port: Any, opts: ExecOptions, pool: ConnectionPool
) -> None:
    host = Host(name="gone", address=refused_port.address, port=refused_port.port, user="root")
    t0 = time.monotonic()
    r = run_command(host, "true", opts, pool)
    assert r.status is Status.UNREACHABLE
    assert "connection refused" in (r.error or "")
    assert time.monotonic() - t0 < 2.5  # not the connect timeout (5 s)


@pytest.mark.parametrize("stub", ["hung_listener", "banner_staller"])
def test_silent_host_bounded_by_connect_timeout(
    stub: str, request: pytest.FixtureRequest, opts: ExecOptions, pool: ConnectionPool
) -> None:
    endpoint = request.getfixturevalue(stub)
    host = Host(name="hung", address=endpoint.address, port=endpoint.port, user="root")
    t0 = time.monotonic()
    options = ExecOptions.from_dict(
        {**opts.to_dict(), "connect_timeout": 1.0, "command_timeout": 30}
    )
    r = run_command(host, "true", options, pool)
    elapsed = time.monotonic() - t0
    assert r.status is Status.UNREACHABLE
    expected = "no SSH banner within 1.0 s" if stub == "hung_listener" else "key exchange"
    assert expected in (r.error or "")
    assert 0.9 < elapsed < 10  # the connect timeout, not the command's (30 s)


def test_key_not_authorized_is_auth_failed(
    ssh_fleet: SSHFleet,
    opts: ExecOptions,
    pool: ConnectionPool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stranger = generate_key(tmp_path / "stranger")
    monkeypatch.setenv("FLEET_TEST_SECRET_PW", "hunter2-secret")
    host = make_host(
        ssh_fleet,
        ssh_fleet.hosts[0],
        identity_file=str(stranger),
        password_env="FLEET_TEST_SECRET_PW",
    )
    options = ExecOptions.from_dict({**opts.to_dict(), "auth_timeout": 20, "command_timeout": 30})
    t0 = time.monotonic()
    r = run_command(host, "true", options, pool)
    assert r.status is Status.AUTH_FAILED, r.error
    assert str(stranger) in (r.error or "")
    assert "hunter2" not in json.dumps(r.to_dict())
    assert time.monotonic() - t0 < 8  # refused outright: no prompt, no wait for a timeout


def test_unknown_host_key_rejected_and_file_untouched(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    other = ssh_fleet.hosts[1]
    known.write_text(other.known_hosts_line() + "\n")
    before = known.read_bytes()
    r = run(ssh_fleet, "true", make_options(known), pool)
    assert r.status is Status.HOSTKEY_REJECTED
    assert fingerprint_of(ssh_fleet.hosts[0]) in (r.error or "")
    assert known.read_bytes() == before


def test_hashed_known_hosts_entry_is_accepted(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    shutil.copy(ssh_fleet.known_hosts, known)
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "|1|" in known.read_text()
    r = run(ssh_fleet, "true", make_options(known), pool)
    assert r.status is Status.OK, r.error


def test_accept_new_records_once_under_concurrency(ssh_fleet: SSHFleet, tmp_path: Path) -> None:
    known = tmp_path / "fleet_known_hosts"
    options = make_options(known, accept_new_host_keys=True)
    host = make_host(ssh_fleet, ssh_fleet.hosts[2])
    results: list[HostResult] = []
    pools = [ConnectionPool() for _ in range(8)]  # separate pools: 8 real connections

    def worker(p: ConnectionPool) -> None:
        results.append(run_command(host, "true", options, p))

    threads = [threading.Thread(target=worker, args=(p,)) for p in pools]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in pools:
        p.close()
    assert [r.status for r in results] == [Status.OK] * 8, [r.error for r in results]
    lines = known.read_text().splitlines()
    assert lines == [ssh_fleet.hosts[2].known_hosts_line()]
    # Recorded once: a later connection neither fails nor appends.
    p = ConnectionPool()
    assert run_command(host, "true", options, p).ok
    p.close()
    assert known.read_text().splitlines() == lines


def test_impostor_rejected_even_with_accept_new(make_ssh_fleet: Any, tmp_path: Path) -> None:
    fleet: SSHFleet = make_ssh_fleet(1)
    genuine = fleet.hosts[0]
    impostor = fleet.start_impostor(genuine)
    before = fleet.known_hosts.read_bytes()
    p = ConnectionPool()
    r = run_command(
        make_host(fleet, genuine),
        "true",
        make_options(fleet.known_hosts, accept_new_host_keys=True),
        p,
    )
    p.close()
    assert r.status is Status.HOSTKEY_REJECTED
    assert fingerprint_of(genuine) in (r.error or "")
    assert fingerprint_of(impostor) in (r.error or "")
    assert "CHANGED" in (r.error or "")
    assert fleet.known_hosts.read_bytes() == before


def test_stdin_is_closed(ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool) -> None:
    options = ExecOptions.from_dict({**opts.to_dict(), "command_timeout": 20})
    t0 = time.monotonic()
    r = run(ssh_fleet, "cat; echo done", options, pool)
    assert r.status is Status.OK and r.stdout == "done\n"  # an open stdin: TIMEOUT
    assert time.monotonic() - t0 < 8


def test_timeout_ends_remote_process(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    options = ExecOptions.from_dict({**opts.to_dict(), "command_timeout": 1.0})
    t0 = time.monotonic()
    r = run(ssh_fleet, f"echo $$ > {pidfile}; echo started; sleep 60", options, pool)
    elapsed = time.monotonic() - t0
    assert r.status is Status.TIMEOUT
    assert r.stdout == "started\n"  # output so far kept
    assert r.remote_kill_confirmed is True, r.error
    assert "timed out after 1 s" in (r.error or "")
    assert elapsed < 15  # the timeout and the kill, not the 60 s sleep
    pid = int(pidfile.read_text())
    check = run(ssh_fleet, f"kill -0 {pid}", opts, pool)
    assert check.status is Status.FAILED  # the remote process is gone
    # Same machine: double-check. The killed shell may stay a zombie until its
    # parent (sshd's session process) reaps it, which takes a moment under load.
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"process {pid} still exists"
        time.sleep(0.05)


def test_closed_streams_do_not_spin(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    assert run(ssh_fleet, "true", opts, pool).ok  # connected: measure the wait alone
    options = ExecOptions.from_dict({**opts.to_dict(), "command_timeout": 5})
    before = resource.getrusage(resource.RUSAGE_SELF)
    r = run(ssh_fleet, "echo bye; exec >&- 2>&-; sleep 2; exit 4", options, pool)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert r.status is Status.FAILED and r.exit_code == 4 and r.stdout == "bye\n", r.error
    assert r.duration_s is not None and r.duration_s > 1.9
    assert cpu < 0.6, f"{cpu:.2f} s of CPU while the command slept"  # spinning: ~2 s


def test_background_child_does_not_hold_the_result(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    # Same outcome as connection: local (tests/integration/test_local.py).
    # Waiting for the child would end in TIMEOUT: the status is the proof.
    options = ExecOptions.from_dict({**opts.to_dict(), "command_timeout": 15})
    t0 = time.monotonic()
    r = run(ssh_fleet, "sleep 20 & echo started", options, pool)
    assert r.status is Status.OK and r.exit_code == 0, r.error
    assert r.stdout == "started\n"
    assert time.monotonic() - t0 < 10  # the EOF grace (2 s), not the command timeout


def test_large_output_on_both_streams(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    cmd = (
        "head -c 5000000 /dev/zero | tr '\\0' a & head -c 5000000 /dev/zero | tr '\\0' b >&2; wait"
    )
    options = ExecOptions.from_dict({**opts.to_dict(), "command_timeout": 120})
    r = run(ssh_fleet, cmd, options, pool)
    assert r.status is Status.OK, r.error
    assert r.stdout_bytes == r.stderr_bytes == 5_000_000
    assert r.stdout_truncated and r.stderr_truncated
    assert r.stdout == "a" * (1 << 20) and r.stderr == "b" * (1 << 20)
    assert r.stdout_kept_bytes == r.stderr_kept_bytes == 1 << 20


def test_kept_bytes_of_invalid_utf8_are_the_cap_not_the_decoded_size(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    options = ExecOptions.from_dict({**opts.to_dict(), "output_cap": 1000})
    r = run(ssh_fleet, "head -c 3000 /dev/zero | tr '\\0' '\\377'", options, pool)
    assert r.status is Status.OK, r.error
    assert r.stdout_bytes == 3000 and r.stdout_kept_bytes == 1000 and r.stdout_truncated
    assert r.stdout == "\ufffd" * 1000  # 3000 bytes once encoded: not what was kept


def test_non_utf8_output_round_trips_as_json(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    r = run(ssh_fleet, r"printf 'caf\351 \377\376 ok\n'; printf '\200' >&2", opts, pool)
    assert r.status is Status.OK
    assert "\ufffd" in r.stdout and r.stdout.endswith(" ok\n")
    again = HostResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r


def test_jump_host(ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool) -> None:
    bastion = ssh_fleet.hosts[0]
    host = make_host(
        ssh_fleet, ssh_fleet.hosts[3], jump=f"{ssh_fleet.user}@{bastion.address}:{bastion.port}"
    )
    r = run_command(host, "echo $SSH_CONNECTION", opts, pool)
    assert r.status is Status.OK, r.error
    # Two transports: the bastion's, and the target's riding a channel of it.
    assert len(pool) == 2
    tunnelled = [e.transport for e in pool._entries.values() if e.target.jump is not None]
    assert len(tunnelled) == 1
    assert isinstance(tunnelled[0].sock.sock, paramiko.Channel)  # under fleet's BannerWatch
    assert r.stdout.split()[3] == str(ssh_fleet.hosts[3].port)
    assert run_command(host, "true", opts, pool).connection_reused


def _sudo_usable() -> str | None:
    if shutil.which("sudo") is None:
        return "sudo is not installed on the harness host"
    if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
        return "`sudo -n true` fails for the harness user"
    return None


@pytest.mark.skipif(_sudo_usable() is not None, reason=str(_sudo_usable()))
def test_become_runs_through_sudo(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    host = make_host(ssh_fleet, ssh_fleet.hosts[0], become=True, env={"GREETING": "hi there"})
    r = run_command(host, 'echo "$SUDO_USER:$(id -un):$GREETING"', opts, pool)
    assert r.status is Status.OK, (r.error, r.stderr)
    assert r.stdout.strip() == f"{ssh_fleet.user}:root:hi there"


@pytest.mark.skipif(_sudo_usable() is not None, reason=str(_sudo_usable()))
def test_sudo_password_not_readable_by_the_command(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOPASSWD (root): sudo never reads stdin, so the password must not reach `cat`.
    monkeypatch.setenv("FLEET_TEST_SUDO_PW", "hunter2-sudo-secret")
    host = make_host(
        ssh_fleet, ssh_fleet.hosts[0], become=True, become_password_env="FLEET_TEST_SUDO_PW"
    )
    r = run_command(host, "cat; echo done", opts, pool)
    assert r.status is Status.OK, (r.error, r.stderr)
    assert r.stdout == "done\n"
    assert "hunter2" not in json.dumps(r.to_dict())


def test_environment_is_quoted_and_validated(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    tricky = "a b'c\"$(touch /tmp/fleet-pwned)`x`"
    options = ExecOptions.from_dict({**opts.to_dict(), "env": {"FLEET_RUN_ID": "r1"}})
    host = make_host(ssh_fleet, ssh_fleet.hosts[0], env={"TRICKY": tricky})
    r = run_command(host, 'printf "%s|%s" "$TRICKY" "$FLEET_RUN_ID"', options, pool)
    assert r.status is Status.OK and r.stdout == f"{tricky}|r1"
    assert not Path("/tmp/fleet-pwned").exists()
    bad = make_host(ssh_fleet, ssh_fleet.hosts[0], env={"X;rm": "1"})
    r = run_command(bad, "true", opts, pool)
    assert r.status is Status.ERROR and "invalid environment variable name" in (r.error or "")


def test_second_command_reuses_transport(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    first = run(ssh_fleet, "true", opts, pool, i=4)
    second = run(ssh_fleet, "true", opts, pool, i=4)
    assert (first.connection_reused, second.connection_reused) == (False, True)
    assert len(pool) == 1


def test_dead_connection_replaced(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    host = make_host(ssh_fleet, ssh_fleet.hosts[5])
    assert run_command(host, "true", opts, pool).ok
    (entry,) = pool._entries.values()
    entry.transport.sock.close()  # the connection dies under the pool
    r = run_command(host, "echo back", opts, pool)
    assert r.status is Status.OK and r.stdout == "back\n", r.error
    assert r.connection_reused is False


def test_killed_sshd_child_replaced(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    host = make_host(ssh_fleet, ssh_fleet.hosts[5])
    first = run_command(host, "echo $PPID", opts, pool)
    assert first.ok
    os.kill(int(first.stdout), 9)  # the sshd session process serving our connection
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        e.transport.is_active() for e in pool._entries.values()
    ):
        time.sleep(0.05)
    r = run_command(host, "echo back", opts, pool)
    assert r.status is Status.OK and r.stdout == "back\n", r.error
    assert r.connection_reused is False


def test_same_new_key_connects_once(ssh_fleet: SSHFleet, opts: ExecOptions) -> None:
    class Counting(Connector):
        calls = 0

        def connect(self, target: Any, sock: Any, options: ExecOptions) -> Any:
            type(self).calls += 1
            return super().connect(target, sock, options)

    p = ConnectionPool(Counting())
    host = make_host(ssh_fleet, ssh_fleet.hosts[1])
    results: list[HostResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(run_command(host, "true", opts, p)))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close()
    assert all(r.ok for r in results)
    assert Counting.calls == 1
    assert sum(r.connection_reused for r in results) == 5


def test_ssh_config_fills_in_host(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[1]
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host web-alias\n  HostName {h.address}\n  Port {h.port}\n  User {ssh_fleet.user}\n"
        f"  IdentityFile {ssh_fleet.client_key}\n"
    )
    options = make_options(ssh_fleet.known_hosts, ssh_config=str(config))
    r = run_command(Host(name="web-alias", address="web-alias"), "echo aliased", options, pool)
    assert r.status is Status.OK and r.stdout == "aliased\n", r.error


def test_sftp_put_and_get(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool, tmp_path: Path
) -> None:
    host = make_host(ssh_fleet, ssh_fleet.hosts[0])
    remote = tmp_path / "remote" / "app.conf"
    remote.parent.mkdir()
    r = put_file(host, b"key = value\n", str(remote), 0o640, opts, pool)
    assert r.status is Status.OK, r.error
    assert remote.read_bytes() == b"key = value\n"
    assert remote.stat().st_mode & 0o777 == 0o640
    local = tmp_path / "fetched" / host.name / "app.conf"
    r = get_file(host, str(remote), local, opts, pool)
    assert r.status is Status.OK and r.connection_reused, r.error
    assert local.read_bytes() == b"key = value\n"
    missing = get_file(host, str(tmp_path / "nope"), tmp_path / "x", opts, pool)
    assert missing.status is Status.ERROR and "No such file" in (missing.error or "")


def test_sftp_upload_unreadable_by_others_until_renamed(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool, tmp_path: Path
) -> None:
    host = make_host(ssh_fleet, ssh_fleet.hosts[0])
    fifo = tmp_path / "source"
    os.mkfifo(fifo)
    target_dir = tmp_path / "etc"
    target_dir.mkdir()
    target = target_dir / "app.conf"
    results: list[HostResult] = []
    upload = threading.Thread(
        target=lambda: results.append(put_file(host, fifo, str(target), 0o644, opts, pool))
    )
    upload.start()
    try:
        writer = _fifo_writer(fifo, upload)
        with writer:
            writer.write(b"secret = 1\n")
            writer.flush()
            temps: list[Path] = []
            deadline = time.monotonic() + 20
            while not temps and time.monotonic() < deadline:
                temps = [p for p in target_dir.rglob("*") if p.is_file()]
                time.sleep(0.01)
            assert temps, "no temporary file seen while the upload waited"
            (temp,) = temps
            # Another user can neither reach nor open it: its directory is private.
            assert temp.parent != target_dir
            assert temp.parent.stat().st_mode & 0o777 == 0o700
            assert temp.stat().st_mode & 0o777 == 0o644  # final mode before the data
            writer.write(b"more = 2\n")
    finally:
        upload.join(30)
    assert results and results[0].status is Status.OK, results
    assert target.read_bytes() == b"secret = 1\nmore = 2\n"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target_dir.iterdir()) == ["app.conf"]  # nothing left over


def _fifo_writer(fifo: Path, reader: threading.Thread) -> Any:
    """The FIFO's write end once the upload has opened it (fails if it never does)."""
    deadline = time.monotonic() + 20
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


class _SilentAfterAuth(paramiko.ServerInterface):
    """Accepts any key and any session, then never answers exec or subsystem."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        self.release.wait(30)  # holds the server's transport thread: no reply
        return False

    def check_channel_subsystem_request(self, channel: Any, name: str) -> bool:
        self.release.wait(30)
        return False


@pytest.fixture
def silent_exec_server(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """A real SSH peer (paramiko server) on 127.0.1.9 that never answers exec."""
    host_key = paramiko.RSAKey.generate(2048)
    server = socket.create_server(("127.0.1.9", 0))
    server.settimeout(0.1)
    port = server.getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.1.9]:{port} ssh-rsa {host_key.get_base64()}\n")
    release = threading.Event()
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while not release.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(host_key)
            transports.append(t)
            # With an event, start_server returns at once (negotiation runs in
            # the transport's thread) and a client hanging up raises nowhere.
            t.start_server(event=threading.Event(), server=_SilentAfterAuth(release))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield "127.0.1.9", port, known
    finally:
        release.set()
        thread.join(2)
        server.close()
        for t in transports:
            t.close()


def test_unanswered_exec_request_is_bounded(
    ssh_fleet: SSHFleet, silent_exec_server: tuple[str, int, Path], pool: ConnectionPool
) -> None:
    address, port, known = silent_exec_server
    host = Host(
        name="mute", address=address, port=port, user="x", identity_file=str(ssh_fleet.client_key)
    )
    # The start timeout is min(connect, command) = 2 s: bounded well under the
    # command timeout (60 s), whatever the load (connect and login take their share).
    options = make_options(known, connect_timeout=2.0, command_timeout=60)
    t0 = time.monotonic()
    r = run_command(host, "true", options, pool)
    assert r.status is Status.TIMEOUT, r.error
    assert "did not answer the request to start the session within 2 s" in (r.error or "")
    assert time.monotonic() - t0 < 20
    assert len(pool) == 0  # the wedged transport is not kept for the next task
    t0 = time.monotonic()
    r = put_file(host, b"x", "/tmp/never", 0o600, options, pool)
    assert r.status is Status.TIMEOUT and "start the session" in (r.error or ""), r.error
    assert time.monotonic() - t0 < 20


class _ReplyLessChannel:
    """Stands for a paramiko channel whose request never gets a reply: the request
    waits on `event`, which close() sets (as paramiko's `_set_closed` does)."""

    def __init__(self, *, arm_late: bool = False, close_error: BaseException | None = None) -> None:
        self.event = threading.Event()
        self.closed = threading.Event()
        self.arm_late = arm_late
        self.close_error = close_error

    def exec_command(self, command: str) -> None:
        if self.arm_late:
            # paramiko clears the event just before sending: a close landing
            # between its "open?" check and that clear is forgotten.
            self.closed.wait(10)
            self.event.clear()
        self.event.wait()
        raise paramiko.SSHException("Channel closed.")

    def close(self) -> None:
        self.closed.set()
        self.event.set()
        if self.close_error is not None:
            raise self.close_error  # e.g. the woken caller closed the transport first


def _bounded(channel: _ReplyLessChannel) -> BaseException | None:
    """bounded_request in a thread (a hang guard); returns what it raised."""
    raised: list[BaseException | None] = []

    def call() -> None:
        try:
            bounded_request(channel, lambda: channel.exec_command("true"), 0.2)
        except BaseException as exc:
            raised.append(exc)
        else:
            raised.append(None)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(20)
    assert raised, "bounded_request did not return"
    return raised[0]


@pytest.mark.parametrize("error", [EOFError(), OSError("Socket is closed")])
def test_expired_request_close_failing_is_still_a_start_timeout(error: BaseException) -> None:
    # The race behind a flaky test: the timer's close() wakes the request, the
    # caller retires the transport, and the close's send then fails in the timer
    # thread. That must not surface as an unhandled thread exception (pytest
    # turns those into errors of whichever test is running).
    assert isinstance(_bounded(_ReplyLessChannel(close_error=error)), StartTimeout)


def test_expired_request_armed_after_the_close_is_still_woken() -> None:
    assert isinstance(_bounded(_ReplyLessChannel(arm_late=True)), StartTimeout)


def test_waiters_on_a_silent_host_share_one_timeout(hung_listener: Any, opts: ExecOptions) -> None:
    # The pool's clock stands still: the failure stays remembered however slowly
    # this test runs (its expiry is unit-tested with a fake clock).
    pool = ConnectionPool(clock=lambda: 0.0)
    opts = ExecOptions.from_dict({**opts.to_dict(), "connect_timeout": 1.0})
    host = Host(name="hung", address=hung_listener.address, port=hung_listener.port, user="r")
    elapsed: list[float] = []
    results: list[HostResult] = []
    t0 = time.monotonic()

    def one() -> None:
        results.append(run_command(host, "true", opts, pool))
        elapsed.append(time.monotonic() - t0)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [Status.UNREACHABLE] * 5
    assert hung_listener.accepted == 1  # one connect, shared
    assert max(elapsed) < 3.5, elapsed  # one connect timeout (1 s), not five in a row
    again = run_command(host, "true", opts, pool)  # the failure is remembered
    pool.close()
    assert again.status is Status.UNREACHABLE
    assert hung_listener.accepted == 1  # no new connect


def test_credentials_and_host_key_policy_are_part_of_the_pool_key(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[1]
    assert run_command(make_host(ssh_fleet, h), "true", opts, pool).ok
    keyless = make_host(ssh_fleet, h, identity_file=str(tmp_path / "no-such-key"))
    r = run_command(keyless, "true", opts, pool)
    assert r.status is Status.AUTH_FAILED, r.error  # not the other host's transport
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    r = run_command(make_host(ssh_fleet, h), "true", make_options(empty), pool)
    assert r.status is Status.HOSTKEY_REJECTED, r.error


class _LimitedSSHD(SSHDProcess):
    def _config(self) -> str:
        return super()._config().replace("MaxSessions 100", "MaxSessions 2")


class _LimitedFleet(SSHFleet):
    def _new_process(self, hosts: Any) -> SSHDProcess:
        self._spawned += 1
        process = _LimitedSSHD(
            self.dir / f"sshd{self._spawned:03d}", hosts, self.authorized_keys, self.home
        )
        for host in hosts:
            self._serving[host.name] = process
        return process


@pytest.fixture
def limited_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHFleet]:
    """One sshd host allowing 2 sessions per connection (OpenSSH's default is 10)."""
    fleet = _LimitedFleet(tmp_path_factory.mktemp("sshd-limited"), count=1, first=40)
    try:
        yield fleet
    finally:
        fleet.stop()


def _concurrently(n: int, call: Any) -> list[HostResult]:
    results: list[HostResult] = []
    threads = [threading.Thread(target=lambda: results.append(call())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_more_commands_than_max_sessions(limited_fleet: SSHFleet, pool: ConnectionPool) -> None:
    host = make_host(limited_fleet, limited_fleet.hosts[0])
    options = make_options(limited_fleet.known_hosts, command_timeout=10)
    results = _concurrently(6, lambda: run_command(host, "sleep 0.5; echo ok", options, pool))
    assert [r.status for r in results] == [Status.OK] * 6, [r.error for r in results]
    assert len(pool) >= 3


def test_timeout_kill_beyond_max_sessions(limited_fleet: SSHFleet, pool: ConnectionPool) -> None:
    host = make_host(limited_fleet, limited_fleet.hosts[0])
    options = make_options(limited_fleet.known_hosts, command_timeout=1)
    results = _concurrently(2, lambda: run_command(host, "sleep 30", options, pool))
    assert [r.status for r in results] == [Status.TIMEOUT] * 2
    assert [r.remote_kill_confirmed for r in results] == [True, True], [r.error for r in results]


def test_a_command_runs_on_a_descriptor_above_fd_setsize(
    ssh_fleet: SSHFleet, opts: ExecOptions, pool: ConnectionPool
) -> None:
    """A worker holding ~1,000 pooled connections gets socket descriptors above 1024,
    which select() refuses ("filedescriptor out of range"): at 2,000 hosts 107 ended
    `error` that way. The wait for output must work at any descriptor number."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"cannot open 1,200 files (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        result = run(ssh_fleet, "sleep 0.2; echo above", opts, pool)
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result.status is Status.OK, result
    assert result.stdout == "above\n"
