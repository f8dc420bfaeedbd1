"""A jump host's own ProxyJump, followed against real sshd (issue 11, point 3):
target -> bastion2 (ProxyJump bastion1): fleet goes bastion1 -> bastion2 -> target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from fleet.inventory.hosts import Host
from fleet.results import Status
from fleet.ssh import ConnectionPool, run_command
from tests.harness.sshd import SSHFleet
from tests.integration.test_ssh import make_options


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    p = ConnectionPool()
    yield p
    p.close()


def test_a_jump_hosts_own_proxyjump_is_followed(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    b1, b2, target = ssh_fleet.hosts[0], ssh_fleet.hosts[1], ssh_fleet.hosts[3]
    config = tmp_path / "ssh_config"
    common = f"    User {ssh_fleet.user}\n    IdentityFile {ssh_fleet.client_key}\n"
    config.write_text(
        f"Host bastion1\n    HostName {b1.address}\n    Port {b1.port}\n{common}"
        f"Host bastion2\n    HostName {b2.address}\n    Port {b2.port}\n{common}"
        "    ProxyJump bastion1\n"
    )
    host = Host(
        name=target.name, address=target.address, port=target.port, user=ssh_fleet.user,
        identity_file=str(ssh_fleet.client_key), jump="bastion2",
    )  # fmt: skip
    options = make_options(ssh_fleet.known_hosts, ssh_config=str(config))
    r = run_command(host, "echo through", options, pool)
    assert r.status is Status.OK, r.error
    assert len(pool) == 3  # bastion1, bastion2 riding bastion1, the target riding bastion2
    by_end = {(e.target.address, e.target.port): e.transport for e in pool._entries.values()}
    assert isinstance(by_end[target.address, target.port].sock.sock, paramiko.Channel)
    assert isinstance(by_end[b2.address, b2.port].sock.sock, paramiko.Channel)
    assert not isinstance(by_end[b1.address, b1.port].sock.sock, paramiko.Channel)  # TCP


def test_a_jump_loop_is_an_error_naming_it(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host hopa\n    ProxyJump hopb\nHost hopb\n    ProxyJump hopa\n")
    host = Host(name="t", address="127.0.0.3", port=22, user="x", jump="hopa")
    options = make_options(ssh_fleet.known_hosts, ssh_config=str(config))
    r = run_command(host, "true", options, pool)
    assert r.status is Status.ERROR
    assert "jump hosts loop: t -> hopa -> hopb -> hopa" in (r.error or ""), r.error
