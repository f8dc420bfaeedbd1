"""OpenSSH's port-less known_hosts fallback against real sshd (every harness host listens
off port 22): a line naming only the address, plain or hashed, is used for
`[addr]:port` when the file has no entry for that port (issue 11, point 4)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from fleet.results import Status
from fleet.ssh import ConnectionPool
from tests.harness.sshd import SSHFleet
from tests.integration.test_ssh import make_options, run


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    p = ConnectionPool()
    yield p
    p.close()


def _portless(ssh_fleet: SSHFleet, index: int) -> str:
    name, rest = ssh_fleet.hosts[index].known_hosts_line().split(" ", 1)
    assert name.startswith("[") and "]:" in name  # the harness never uses port 22
    return f"{ssh_fleet.hosts[index].address} {rest}\n"


def test_a_portless_entry_is_used_for_a_non_22_port(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(_portless(ssh_fleet, 0))
    r = run(ssh_fleet, "echo ok", make_options(known), pool)
    assert r.status is Status.OK, r.error


def test_a_hashed_portless_entry_is_used_too(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(_portless(ssh_fleet, 1))
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "|1|" in known.read_text()
    r = run(ssh_fleet, "true", make_options(known), pool, i=1)
    assert r.status is Status.OK, r.error


def test_a_portless_entry_with_another_hosts_key_is_unknown_not_changed(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    other = paramiko.ECDSAKey.generate()  # a key no harness host has
    known.write_text(f"{ssh_fleet.hosts[2].address} {other.get_name()} {other.get_base64()}\n")
    before = known.read_bytes()
    r = run(ssh_fleet, "true", make_options(known), pool, i=2)
    assert r.status is Status.HOSTKEY_REJECTED
    assert "unknown host key" in (r.error or "") and "CHANGED" not in (r.error or "")
    assert known.read_bytes() == before
