"""The harness itself: every fixture starts what it promises and stops it cleanly."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import paramiko
import pytest
import redis
import yaml

from tests.harness.ledger import Ledger
from tests.harness.redis_server import RedisServer
from tests.harness.sshd import MakeFleet, SSHFleet, SSHHost
from tests.harness.stubs import SSH_BANNER, BannerStaller, Endpoint, HungListener
from tests.harness.workers import StartWorker


def _connect(fleet: SSHFleet, host: SSHHost, known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or fleet.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.address,
        host.port,
        username=fleet.user,
        key_filename=str(fleet.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
        banner_timeout=5,
        auth_timeout=5,
    )
    return client


def _run(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, _ = client.exec_command(command, timeout=10)
    out = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_redis_answers_on_its_own_port(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        client.set("harness:key", "value")
        assert client.get("harness:key") == b"value"
    finally:
        client.delete("harness:key")
        client.close()


def test_redis_restart_keeps_port_and_kill_is_a_crash(fresh_redis: RedisServer) -> None:
    port, pid = fresh_redis.port, fresh_redis.pid
    fresh_redis.restart()
    assert fresh_redis.port == port
    assert fresh_redis.pid != pid
    assert not _pid_alive(pid)
    client = redis.Redis.from_url(fresh_redis.url, socket_timeout=2)
    try:
        assert client.ping()
        pid = fresh_redis.pid
        fresh_redis.kill()
        assert not _pid_alive(pid)
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()


def test_every_session_host_runs_commands_with_harness_keys(ssh_fleet: SSHFleet) -> None:
    assert len(ssh_fleet.hosts) == 6
    assert [h.address for h in ssh_fleet.hosts] == [f"127.0.0.{n}" for n in range(2, 8)]
    for host in ssh_fleet.hosts:
        client = _connect(ssh_fleet, host)
        try:
            out = _run(client, "echo hi; echo $SSH_CONNECTION; echo $HOME")
        finally:
            client.close()
        hi, connection, home = out.splitlines()
        assert hi == "hi"
        assert connection.split()[2:] == [host.address, str(host.port)]
        assert home == str(ssh_fleet.home)  # not the user's real home: no slow rc files


def test_known_hosts_lists_every_host(ssh_fleet: SSHFleet) -> None:
    lines = ssh_fleet.known_hosts.read_text().splitlines()
    assert lines == [h.known_hosts_line() for h in ssh_fleet.hosts]
    assert all(line.startswith("[127.0.0.") and " ssh-ed25519 " in line for line in lines)


def test_unknown_host_key_is_rejected(ssh_fleet: SSHFleet, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        _connect(ssh_fleet, ssh_fleet.hosts[0], known_hosts=empty)


def test_twenty_hosts_over_several_sshd_processes(make_ssh_fleet: MakeFleet) -> None:
    fleet = make_ssh_fleet(20)
    assert len(fleet.hosts) == 20
    assert len(fleet.pids()) >= 2
    assert len({h.address for h in fleet.hosts}) == 20
    for host in fleet.hosts:
        client = _connect(fleet, host)
        try:
            assert _run(client, "echo $SSH_CONNECTION").split()[2] == host.address
        finally:
            client.close()


def test_impostor_on_same_address_is_rejected(make_ssh_fleet: MakeFleet) -> None:
    fleet = make_ssh_fleet(3, own_key=("h09",))
    target = fleet.host("h09")
    assert target.host_key_path != fleet.hosts[0].host_key_path
    before = fleet.known_hosts.read_text()
    impostor = fleet.start_impostor(target)
    assert (impostor.address, impostor.port) == (target.address, target.port)
    assert impostor.public_key() != target.public_key()
    with pytest.raises(paramiko.BadHostKeyException):
        _connect(fleet, target)
    assert fleet.known_hosts.read_text() == before
    fleet.start_host(target)
    _connect(fleet, target).close()


def test_kill_host_refuses_and_others_keep_serving(make_ssh_fleet: MakeFleet) -> None:
    fleet = make_ssh_fleet(3)
    down, *others = fleet.hosts
    live = _connect(fleet, down)
    _, stdout, _ = live.exec_command("echo started; sleep 30")
    assert stdout.readline() == "started\n"
    fleet.kill_host(down)
    stdout.channel.settimeout(5)
    assert stdout.read() == b""  # the session was cut, not left running
    live.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((down.address, down.port), timeout=2).close()
    for host in others:
        _connect(fleet, host).close()
    fleet.start_host(down)
    _connect(fleet, down).close()


def test_write_inventory(ssh_fleet: SSHFleet, tmp_path: Path) -> None:
    path = ssh_fleet.write_inventory(tmp_path / "inventory.yaml", extra_vars={"queue": "dc-a"})
    data = yaml.safe_load(path.read_text())
    web = data["groups"]["web"]
    assert web["vars"] == {"queue": "dc-a"}
    first = ssh_fleet.hosts[0]
    assert web["hosts"][first.name] == {
        "address": first.address,
        "port": first.port,
        "user": ssh_fleet.user,
        "identity_file": str(ssh_fleet.client_key),
    }


def test_ledger_records_each_execution(ssh_fleet: SSHFleet, ledger: Ledger) -> None:
    host = ssh_fleet.hosts[0]
    client = _connect(ssh_fleet, host)
    try:
        command = f"FLEET_RUN_ID=run-1 FLEET_HOST={host.name}; {ledger.command('echo done')}"
        assert _run(client, command) == "done\n"
    finally:
        client.close()
    assert ledger.lines(host.name) == ["run-1"]
    assert ledger.lines("never-ran") == []
    ledger.assert_at_most_once()


def test_refused_port_refuses(refused_port: Endpoint) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((refused_port.address, refused_port.port), timeout=5)
    assert time.monotonic() - started < 4.0  # refused at once, not the 5 s timeout


def test_hung_listener_accepts_and_stays_silent(hung_listener: HungListener) -> None:
    with socket.create_connection((hung_listener.address, hung_listener.port), timeout=2) as sock:
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(64)
    assert hung_listener.accepted == 1


def test_banner_staller_sends_banner_then_stalls(banner_staller: BannerStaller) -> None:
    with socket.create_connection((banner_staller.address, banner_staller.port), timeout=2) as s:
        s.settimeout(1.0)
        assert s.recv(64) == SSH_BANNER
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(64)


def test_paramiko_gives_up_on_stalled_banner(hung_listener: HungListener) -> None:
    transport = paramiko.Transport(
        socket.create_connection((hung_listener.address, hung_listener.port), timeout=2)
    )
    transport.banner_timeout = 0.5
    started = time.monotonic()
    try:
        with pytest.raises(paramiko.SSHException, match="banner"):
            transport.start_client(timeout=2)
    finally:
        transport.close()
    assert time.monotonic() - started < 10.0  # bounded: a hang guard


def test_worker_starts_and_stops_cleanly(start_worker: StartWorker) -> None:
    worker = start_worker(queues=("fleet", "dc-a"), concurrency=2)
    assert worker.is_running
    assert worker.node_name.endswith("@testnode")
    assert "dc-a" in worker.log_text()
    pid = worker.pid
    worker.stop()
    assert not _pid_alive(pid)
    assert worker.returncode == 0, worker.log_text()[-2000:]


def test_worker_sigkill(start_worker: StartWorker) -> None:
    worker = start_worker(name="doomed")
    pid = worker.pid
    worker.kill()
    assert not _pid_alive(pid)
    assert not worker.is_running


def test_processes_are_in_their_own_groups(ssh_fleet: SSHFleet, redis_server: RedisServer) -> None:
    # Stopping a harness process by group must never reach pytest's own group.
    for pid in [*ssh_fleet.pids(), redis_server.pid]:
        assert os.getpgid(pid) == pid != os.getpgrp()
