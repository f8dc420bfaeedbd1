"""ssh_config read the way OpenSSH reads it, against real sshd hosts (issue 11, point 2).

Hosts come from an inventory parsed as a user writes it (so the inventory's explicit
values are known), the ssh config is the test's own file, and every host runs
``echo $SSH_CONNECTION``: the server address and port it shows prove where fleet went.
"""

from __future__ import annotations

import getpass
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.inventory.hosts import Host
from fleet.inventory.loader import parse_inventory
from fleet.results import HostResult, Status
from fleet.ssh import ConnectionPool, run_command, ssh_g
from tests.harness.sshd import MakeFleet, SSHFleet, SSHHost
from tests.integration.test_ssh import make_options

pytestmark = pytest.mark.skipif(
    shutil.which("ssh") is None, reason="OpenSSH client (ssh) not installed"
)


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ConnectionPool]:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))  # no default keys, %d is this directory
    ssh_g.reset_cache()
    p = ConnectionPool()
    yield p
    p.close()


def inventory_host(text: str) -> Host:
    """The one host of an inventory written as a user would."""
    (host,) = parse_inventory(text, "inventory.yaml").hosts
    return host


def run(fleet: SSHFleet, pool: ConnectionPool, host: Host, config: Path) -> HostResult:
    options = make_options(fleet.known_hosts, ssh_config=str(config))
    return run_command(host, "echo $SSH_CONNECTION", options, pool)


def server_of(result: HostResult) -> tuple[str, int]:
    assert result.status is Status.OK, result.error
    *_, address, port = result.stdout.split()
    return address, int(port)


def login(fleet: SSHFleet) -> str:
    return f"    User {fleet.user}\n    IdentityFile {fleet.client_key}\n"


def block(name: str, h: SSHHost, fleet: SSHFleet) -> str:
    return f"Host {name}\n    HostName {h.address}\n    Port {h.port}\n" + login(fleet)


def test_include_of_a_conf_d_glob_reaches_the_host_by_hostname(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[0]
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "web.conf").write_text(block("web001", h, ssh_fleet))
    config = tmp_path / "config"
    config.write_text(f"Include {tmp_path}/conf.d/*.conf\n")
    host = inventory_host("groups: {web: {hosts: {web001: {}}}}")
    assert server_of(run(ssh_fleet, pool, host, config)) == (h.address, h.port)


def test_match_host_equals_and_a_comment_after_a_value(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[1]
    config = tmp_path / "config"
    config.write_text(
        f"Match host=web002\n    HostName {h.address} # the second web box\n"
        f"    Port {h.port}  # its sshd\n" + login(ssh_fleet)
    )
    host = inventory_host("groups: {web: {hosts: {web002: {}}}}")
    assert server_of(run(ssh_fleet, pool, host, config)) == (h.address, h.port)


def test_percent_tokens_in_user_and_identity_file(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[2]
    me = getpass.getuser()
    key = Path(os.environ["HOME"]) / ".ssh" / f"id_{me}_{h.port}"
    shutil.copy(ssh_fleet.client_key, key)
    key.chmod(0o600)
    config = tmp_path / "config"
    config.write_text(
        f"Host web003\n    HostName {h.address}\n    Port {h.port}\n"
        "    User %u\n    IdentityFile ~/.ssh/id_%r_%p\n"
    )
    host = inventory_host("groups: {web: {hosts: {web003: {}}}}")
    options = make_options(ssh_fleet.known_hosts, ssh_config=str(config))
    r = run_command(host, "id -un", options, pool)
    assert r.status is Status.OK, r.error
    assert r.stdout.strip() == me


def test_host_brackets_are_no_character_class(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[3]
    config = tmp_path / "config"
    config.write_text("Host web[12]\n    Port 1\n" + block("web1", h, ssh_fleet))
    host = inventory_host("groups: {web: {hosts: {web1: {}}}}")
    assert server_of(run(ssh_fleet, pool, host, config)) == (h.address, h.port)


def test_proxycommand_is_run_and_wins_over_a_later_proxyjump(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path, refused_port: object
) -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat not installed")
    h = ssh_fleet.hosts[4]
    config = tmp_path / "config"
    config.write_text(
        block("app", h, ssh_fleet) + "    ProxyCommand socat - TCP:%h:%p\n"
        f"    ProxyJump nobody@{refused_port.address}:{refused_port.port}\n"  # type: ignore[attr-defined]
    )
    host = inventory_host("groups: {g: {hosts: {app: {}}}}")
    assert server_of(run(ssh_fleet, pool, host, config)) == (h.address, h.port)
    (entry,) = pool._entries.values()
    assert entry.transport.sock.sock.command == f"socat - TCP:{h.address}:{h.port}"


def test_proxycommand_ssh_w_through_a_real_jump_host(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    bastion, h = ssh_fleet.hosts[0], ssh_fleet.hosts[5]
    config = tmp_path / "config"
    config.write_text(
        block("bastion", bastion, ssh_fleet)
        + f"    UserKnownHostsFile {ssh_fleet.known_hosts}\n    BatchMode yes\n"
        + block("app", h, ssh_fleet)
        + f"    ProxyCommand ssh -F {config} -W %h:%p bastion\n"
    )
    host = inventory_host("groups: {g: {hosts: {app: {}}}}")
    assert server_of(run(ssh_fleet, pool, host, config)) == (h.address, h.port)


def test_a_failing_proxycommand_is_unreachable_with_its_words(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.write_text("Host app\n    ProxyCommand echo 'no route to %h' >&2; exit 1\n")
    host = inventory_host("groups: {g: {hosts: {app: {}}}}")
    r = run(ssh_fleet, pool, host, config)
    assert r.status is Status.UNREACHABLE, r.error
    assert "through ProxyCommand" in (r.error or "") and "no route to app" in (r.error or "")


def test_inventory_port_22_wins_over_the_configs_port(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[1]
    config = tmp_path / "config"
    config.write_text(block("web1", h, ssh_fleet))
    silent = inventory_host("groups: {web: {hosts: {web1: {}}}}")
    assert server_of(run(ssh_fleet, pool, silent, config)) == (h.address, h.port)
    said = inventory_host("groups: {web: {hosts: {web1: {port: 22}}}}")
    r = run(ssh_fleet, pool, said, config)
    assert r.status is not Status.OK
    assert f"{h.address}:22" in (r.error or ""), r.error


def test_inventory_address_equal_to_the_name_wins_over_hostname(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[2]
    config = tmp_path / "config"
    config.write_text(
        f"Host {h.address}\n    HostName 127.0.1.250\n    Port {h.port}\n" + login(ssh_fleet)
    )
    said = inventory_host(f"groups: {{g: {{hosts: {{'{h.address}': {{address: {h.address}}}}}}}}}")
    assert server_of(run(ssh_fleet, pool, said, config)) == (h.address, h.port)
    silent = inventory_host(f"groups: {{g: {{hosts: {{'{h.address}': {{}}}}}}}}")
    assert run(ssh_fleet, pool, silent, config).status is Status.UNREACHABLE


def test_inventory_jump_none_connects_directly(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path, refused_port: object
) -> None:
    h = ssh_fleet.hosts[3]
    config = tmp_path / "config"
    config.write_text(
        block("app", h, ssh_fleet)
        + f"    ProxyJump nobody@{refused_port.address}:{refused_port.port}\n"  # type: ignore[attr-defined]
    )
    host = inventory_host("groups: {g: {hosts: {app: {jump: none}}}}")
    assert server_of(run(ssh_fleet, pool, host, config)) == (h.address, h.port)


def test_match_originalhost_and_host_star_defaults_after_a_block(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[4]
    config = tmp_path / "config"
    config.write_text(
        f"Match originalhost db1\n    HostName {h.address}\n    Port {h.port}\n"
        + login(ssh_fleet)
        + "Host *\n    Port 1\n    User nobody-at-all\n"
    )
    host = inventory_host("groups: {db: {hosts: {db1: {}}}}")
    assert server_of(run(ssh_fleet, pool, host, config)) == (h.address, h.port)


def test_several_identity_files_the_authorized_one_last(
    ssh_fleet: SSHFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    h = ssh_fleet.hosts[5]
    config = tmp_path / "config"
    config.write_text(
        f"Host web9\n    HostName {h.address}\n    Port {h.port}\n    User {ssh_fleet.user}\n"
        f"    IdentityFile {tmp_path}/missing-key\n    IdentityFile {ssh_fleet.client_key}\n"
    )
    host = inventory_host("groups: {web: {hosts: {web9: {}}}}")
    assert server_of(run(ssh_fleet, pool, host, config)) == (h.address, h.port)


def test_a_config_openssh_refuses_is_each_hosts_error_naming_it(
    make_ssh_fleet: MakeFleet, pool: ConnectionPool, tmp_path: Path
) -> None:
    fleet = make_ssh_fleet(1)
    config = tmp_path / "config"
    config.write_text("Host *\n    Port\n")
    host = inventory_host("groups: {web: {hosts: {web1: {}}}}")
    r = run(fleet, pool, host, config)
    assert r.status is Status.ERROR
    assert str(config) in (r.error or ""), r.error
