"""Banner failures told apart, in one line each, with no library traceback anywhere
(issue 11, point 5): a peer that closes at once, one that is not an SSH server, one
that stays silent, one that stalls the key exchange; directly and through a jump host."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.inventory.hosts import Host
from fleet.results import Status
from fleet.ssh import ConnectionPool, run_command
from tests.harness.sshd import SSHFleet
from tests.harness.stubs import BannerStaller, ClosingListener, HungListener, NotSSHListener
from tests.integration.fleetcli import FleetCLI
from tests.integration.test_ssh import make_options

TIMEOUT_S = 3.0


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    p = ConnectionPool()
    yield p
    p.close()


def _stub_host(stub: HungListener, **kw: str) -> Host:
    return Host(name="stub", address=stub.address, port=stub.port, user="nobody", **kw)


CASES = [
    (ClosingListener, "closed the connection before sending an SSH banner", 1.0),
    (NotSSHListener, "is not an SSH server (it answered 'HTTP/1.1 400 Bad Request')", 1.0),
    (HungListener, f"no SSH banner within {TIMEOUT_S:.1f} s", TIMEOUT_S + 2.0),
    (BannerStaller, f"SSH key exchange did not finish within {TIMEOUT_S:.1f} s", TIMEOUT_S + 2.0),
]


@pytest.mark.parametrize(("stub_type", "words", "at_most_s"), CASES)
def test_each_banner_failure_has_its_own_reason(
    stub_type: type[HungListener],
    words: str,
    at_most_s: float,
    ssh_fleet: SSHFleet,
    pool: ConnectionPool,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with stub_type("127.0.1.7") as stub:
        options = make_options(ssh_fleet.known_hosts, connect_timeout=TIMEOUT_S)
        started = time.monotonic()
        r = run_command(_stub_host(stub), "true", options, pool)
        took = time.monotonic() - started
    assert r.status is Status.UNREACHABLE
    assert words in (r.error or ""), r.error
    assert took < at_most_s, took  # a close is reported at once, not after the timeout
    assert "\x1b" not in (r.error or "")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "paramiko" not in err, err


@pytest.mark.parametrize(("stub_type", "words", "at_most_s"), CASES[:2])
def test_the_same_reasons_through_a_jump_host(
    stub_type: type[HungListener],
    words: str,
    at_most_s: float,
    ssh_fleet: SSHFleet,
    pool: ConnectionPool,
    capfd: pytest.CaptureFixture[str],
) -> None:
    bastion = ssh_fleet.hosts[0]
    with stub_type("127.0.1.8") as stub:
        host = _stub_host(
            stub,
            jump=f"{ssh_fleet.user}@{bastion.address}:{bastion.port}",
            identity_file=str(ssh_fleet.client_key),
        )
        r = run_command(host, "true", make_options(ssh_fleet.known_hosts), pool)
    assert r.status is Status.UNREACHABLE and words in (r.error or ""), r.error
    assert "Traceback" not in capfd.readouterr().err


def test_the_cli_prints_reasons_and_no_library_traceback(tmp_path: Path) -> None:
    with ClosingListener("127.0.1.9") as closing, NotSSHListener("127.0.1.10") as web:
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(
            "groups:\n  stubs:\n    hosts:\n"
            f"      closing: {{address: {closing.address}, port: {closing.port}}}\n"
            f"      web: {{address: {web.address}, port: {web.port}}}\n"
        )
        cli = FleetCLI(inventory, {"FLEET_HOME": str(tmp_path / "home")})
        done = cli.run(["run", "true", "-g", "stubs", "--connect-timeout", "2"], timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "paramiko" not in done.stderr, done.stderr
    assert "Error reading SSH protocol banner" not in done.stdout + done.stderr
    assert "before sending an SSH banner" in done.stdout
    assert "is not an SSH server" in done.stdout
    assert "\x1b" not in done.stdout
